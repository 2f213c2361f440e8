"""Synthetic personal data that looks real: phone numbers, IPs, cards, IBANs, emails, transcripts.

Pure and seeded (values come from the `random.Random` passed in). Phone numbers are made from the
phonenumbers library's example numbers with varied digits and checked with is_valid_number; card
numbers pass Luhn; IBANs pass the mod-97 checksum. `generate_transcript` returns a transcript with
its ground truth: which substrings are PII (by category) and which ordinary numbers (amounts,
times, dates, order numbers, versions) redaction must keep.
"""

from __future__ import annotations

import ipaddress
import random
from dataclasses import dataclass
from functools import cache

import phonenumbers as pn
from phonenumbers import PhoneNumberFormat as PNF
from phonenumbers import PhoneNumberType as PNT


@dataclass(frozen=True)
class Number:
    """One valid phone number, in the ways it gets written."""

    region: str
    e164: str
    international: str
    national: str
    mobile: bool

    def as_written(self, rng: random.Random, home: str) -> str:
        """As a carrier would present it: mostly E.164, sometimes national (own country only)."""
        r = rng.random()
        if r < 0.5:
            return self.e164
        if r < 0.65 or self.region != home:
            return self.international
        return self.national if r < 0.9 else self.national.replace(" ", "-")


@dataclass(frozen=True)
class Transcript:
    """A transcript and its ground truth: pii = (category, text) spans; keep = must survive."""

    text: str
    pii: tuple[tuple[str, str], ...]
    keep: tuple[str, ...]


def make_number(rng: random.Random, region: str, mobile: bool) -> Number:
    kind = PNT.MOBILE if mobile else PNT.FIXED_LINE
    example = pn.example_number_for_type(region, kind)
    assert example is not None
    digits = pn.national_significant_number(example)
    cc = example.country_code
    for _ in range(50):
        keep = len(digits) - min(6, len(digits) - 2)
        varied = digits[:keep] + "".join(str(rng.randrange(10)) for _ in range(len(digits) - keep))
        num = pn.parse(f"+{cc}{varied}")
        if pn.is_valid_number(num) and pn.number_type(num) in (kind, PNT.FIXED_LINE_OR_MOBILE):
            break
    else:
        num = example
    return Number(
        region,
        pn.format_number(num, PNF.E164),
        pn.format_number(num, PNF.INTERNATIONAL),
        pn.format_number(num, PNF.NATIONAL),
        mobile,
    )


@cache
def number_pool(seed: int, region: str, size: int = 60) -> tuple[Number, ...]:
    """External (non-customer) numbers of a country, ~60% mobile."""
    rng = random.Random(f"{seed}:pool:{region}")
    return tuple(make_number(rng, region, rng.random() < 0.6) for _ in range(size))


def make_ip(rng: random.Random) -> str:
    while True:
        if rng.random() < 0.7:
            addr: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.IPv4Address(rng.getrandbits(32))
        else:
            addr = ipaddress.IPv6Address((0x2A00 + rng.randrange(0x200)) << 112 | rng.getrandbits(112))
        if addr.is_global:
            return str(addr)


def _luhn_complete(digits: str) -> str:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 0:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return digits + str((10 - total % 10) % 10)


def _card(rng: random.Random) -> str:
    prefix, length = rng.choice((("4", 16), ("51", 16), ("55", 16), ("37", 15)))
    body = prefix + "".join(str(rng.randrange(10)) for _ in range(length - len(prefix) - 1))
    number = _luhn_complete(body)
    if length == 16 and rng.random() < 0.5:
        return " ".join(number[i : i + 4] for i in range(0, 16, 4))
    return number


def _iban(rng: random.Random) -> str:
    country, bban = rng.choice(
        (
            ("DE", "".join(str(rng.randrange(10)) for _ in range(18))),
            ("GB", "NWBK" + "".join(str(rng.randrange(10)) for _ in range(14))),
            ("NL", "ABNA" + "".join(str(rng.randrange(10)) for _ in range(10))),
            ("FR", "".join(str(rng.randrange(10)) for _ in range(23))),
        )
    )
    moved = "".join(str(int(ch, 36)) for ch in bban + country + "00")
    iban = f"{country}{98 - int(moved) % 97:02d}{bban}"
    if rng.random() < 0.5:
        return " ".join(iban[i : i + 4] for i in range(0, len(iban), 4))
    return iban


def generate_transcript(rng: random.Random, region: str) -> Transcript:
    """A short call transcript mentioning PII and ordinary numbers, with its ground truth."""
    pool = number_pool(0, region)
    pii: list[tuple[str, str]] = []
    keep: list[str] = []
    parts = ["Agent: thanks for calling, how can I help?"]

    def put(category: str, value: str, template: str) -> None:
        if category == "keep":
            keep.append(value)
        else:
            pii.append((category, value))
        parts.append(template.format(value))

    choices = rng.sample(range(11), k=rng.randint(3, 6))
    for c in choices:
        if c == 0:
            put("phone", rng.choice(pool).international, "Customer: you can call me back on {}.")
        elif c == 1:
            put("phone", rng.choice(pool).national, "Customer: my other number is {}.")
        elif c == 2:
            user = rng.choice(("j.smith", "maria.garcia", "k.tanaka", "a.mueller", "priya.n"))
            domain = rng.choice(("example.com", "mail.example.org", "northwind-corp.co.uk"))
            put("email", f"{user}{rng.randrange(100)}@{domain}", "Customer: please email {} instead.")
        elif c == 3:
            put("ip", make_ip(rng), "Agent: the router reports the address {} right now.")
        elif c == 4:
            put("card", _card(rng), "Customer: charge it to card {} please.")
        elif c == 5:
            put("iban", _iban(rng), "Customer: refund to my account {} thanks.")
        elif c == 6:
            amount = rng.choice(
                (
                    f"€{rng.randrange(5, 500)}.{rng.randrange(100):02d}",
                    f"${rng.randrange(1, 9)},{rng.randrange(100, 999)}.00",
                )
            )
            put("keep", amount, "Agent: the open balance is {}.")
        elif c == 7:
            put(
                "keep",
                f"{rng.randrange(8, 18)}:{rng.choice(('00', '15', '30', '45'))}",
                "Agent: a technician comes at {}.",
            )
        elif c == 8:
            put("keep", f"ORD-2026-{rng.randrange(1000, 999999):06d}", "Agent: your order {} has shipped.")
        elif c == 9:
            put("keep", f"INC{rng.randrange(10**6, 10**7)}", "Agent: I opened ticket {} for this.")
        else:
            keep_date = f"{rng.randrange(1, 28):02d}/{rng.randrange(1, 12):02d}/2026"
            put("keep", keep_date, "Agent: the contract renews on {}, app version 4.12.3 is current.")
            keep.append("4.12.3")
    parts.append("Agent: anything else? Customer: no, bye.")
    return Transcript(" ".join(parts), tuple(pii), tuple(keep))
