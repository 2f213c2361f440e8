"""Transcripts as others write them, for `callpipe bench detect`: the shapes that callpipe's own
generator (pipeline.carrier.generate_pii) never produces and that leaked before issue 10.

Each transcript holds some of: cards of every major brand and length (Visa 13/16/19, Mastercard
51-55 and 2221-2720, Amex, Diners 14, Discover, JCB 16 and 15 (1800/2131), UnionPay 16-19,
Maestro 12-19, Mir), IBANs of 40 countries (lengths 15 to 33) in running text, grouped by
spaces, dashes or not at all; numbers written after every kind of international call prefix
(00, 011, 0011, 010, 001, 008), after "++", a full-width "＋" or glued to a word; national
numbers inside unspaced Chinese and Japanese; IPv4 in parentheses; and ordinary numbers that
must survive (an amount right before a phone number, a date with a time, ZIP codes, order
numbers in Chinese). Pure and seeded, like generate_pii.
"""

from __future__ import annotations

import random

from pipeline.carrier.generate_pii import Transcript, make_ip, number_pool
from pipeline.detect_checks import IBAN_LENGTHS

# BBAN layouts as (count, kind): n digits, a capital letters (registry formats, simplified to
# what every national validator also accepts).
_BBAN = {
    "ES": "20n", "BE": "12n", "AT": "16n", "LU": "16n", "PL": "24n", "HU": "24n", "CY": "24n",
    "DE": "18n", "FR": "23n", "IT": "1a22n", "NL": "4a10n", "GB": "4a14n", "PT": "21n",
    "DK": "14n", "FI": "14n", "NO": "11n", "SE": "20n", "CH": "17n", "CZ": "20n", "SK": "20n",
    "HR": "17n", "SI": "15n", "EE": "16n", "LT": "16n", "LV": "4a13n", "RO": "4a16n",
    "BG": "4a14n", "IE": "4a14n", "GR": "23n", "TR": "22n", "SA": "20n", "IL": "19n",
    "MT": "4a23n", "IS": "22n", "MC": "23n", "SM": "1a22n", "LI": "17n", "GI": "4a15n",
    "KW": "4a22n", "RU": "29n",
}  # fmt: skip
# (issuer prefixes, lengths) of the major brands
_CARDS = (
    (("4",), (13, 16, 19)),
    (("51", "52", "53", "54", "55", "2221", "2500", "2720"), (16,)),
    (("34", "37"), (15,)),
    (("36", "300", "305", "38"), (14,)),
    (("6011", "644", "65"), (16, 19)),
    (("3528", "3589"), (16, 19)),
    (("1800", "2131"), (15,)),
    (("62",), (16, 17, 18, 19)),
    (("6759", "5018", "6304", "5020"), (12, 13, 16, 19)),
    (("2200", "2204"), (16,)),
)
_IDD = ("00", "011", "0011", "010", "001", "008")


def _luhn_complete(body: str) -> str:
    total = 0
    for i, ch in enumerate(reversed(body)):
        d = int(ch)
        if i % 2 == 0:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return body + str((10 - total % 10) % 10)


def card(rng: random.Random) -> str:
    prefixes, lengths = rng.choice(_CARDS)
    prefix, length = rng.choice(prefixes), rng.choice(lengths)
    digits = _luhn_complete(prefix + "".join(str(rng.randrange(10)) for _ in range(length - len(prefix) - 1)))
    style = rng.random()
    if length == 15 and prefix in ("34", "37") and style < 0.5:
        return f"{digits[:4]} {digits[4:10]} {digits[10:]}"
    if style < 0.4:
        return " ".join(digits[i : i + 4] for i in range(0, length, 4))
    if style < 0.5:
        return "-".join(digits[i : i + 4] for i in range(0, length, 4))
    return digits


def iban(rng: random.Random) -> str:
    country = rng.choice(sorted(_BBAN))
    layout, bban = _BBAN[country], list[str]()
    for part in layout.replace("n", "n ").replace("a", "a ").split():
        count, kind = int(part[:-1]), part[-1]
        alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ" if kind == "a" else "0123456789"
        bban.extend(rng.choice(alphabet) for _ in range(count))
    body = "".join(bban)
    assert len(body) + 4 == IBAN_LENGTHS[country], country
    moved = "".join(str(int(ch, 36)) for ch in body + country + "00")
    compact = f"{country}{98 - int(moved) % 97:02d}{body}"
    style = rng.random()
    if style < 0.5:
        return " ".join(compact[i : i + 4] for i in range(0, len(compact), 4))
    if style < 0.65:
        return "-".join(compact[i : i + 4] for i in range(0, len(compact), 4))
    return compact


def _abroad(rng: random.Random, region: str) -> str:
    """A foreign number written with an international call prefix or an unusual plus."""
    others = ("GB", "DE", "FR", "US", "JP", "AU", "IN", "BR", "ES", "IT", "NL", "SE")
    number = rng.choice(number_pool(0, rng.choice([r for r in others if r != region])))
    digits = number.international[1:]
    style = rng.random()
    if style < 0.6:
        return f"{rng.choice(_IDD)} {digits}"
    if style < 0.75:
        return "++" + digits
    if style < 0.9:
        return "＋" + digits
    return "call+" + digits


def hard_transcript(rng: random.Random, region: str) -> Transcript:
    """A transcript in the shapes of text written by others, with its ground truth."""
    pool = number_pool(0, region)
    pii: list[tuple[str, str]] = []
    keep: list[str] = []
    parts = ["Agent: thanks for calling, how can I help?"]

    def put(category: str, value: str, template: str, found: str | None = None) -> None:
        pii.append((category, found or value))
        parts.append(template.format(value))

    for c in rng.sample(range(10), k=rng.randint(3, 6)):
        national = rng.choice(pool).national.replace(" ", "-")
        if c == 0:
            put("card", card(rng), "Customer: charge it to {} please.")
        elif c == 1:
            put("iban", iban(rng), "Customer: wire the refund to {} by monday.")
        elif c == 2:
            value = _abroad(rng, region)
            put("phone", value, "Customer: my brother is on {} most days.", value.removeprefix("call"))
        elif c == 3:
            put("phone", national, "客户：我的电话号码是{}，谢谢。")
        elif c == 4:
            put("phone", national, "お客様：電話番号は{}です。")
        elif c == 5:
            put("ip", make_ip(rng), "Agent: the modem ({}) is up.")
        elif c == 6:
            amount = f"${rng.randrange(2, 90)}"
            keep.append(amount)
            put("phone", national, f"Customer: it was {amount} {{}} is my cell.")
        elif c == 7:
            stamp = f"2026{rng.randrange(1, 13):02d}{rng.randrange(1, 29):02d} {rng.randrange(8, 18):02d}:00"
            zip_code = f"zip {rng.randrange(10000, 99999)}"
            keep += [stamp, zip_code]
            parts.append(f"Agent: logged {stamp}, {zip_code} on file.")
        elif c == 8:
            order = f"2026{rng.randrange(10**8, 10**9)}"
            keep.append(order)
            parts.append(f"客户：订单号{order}还没到。")
        else:
            put("phone", rng.choice(pool).international, "Customer: or try me on {} instead.")
    parts.append("Agent: anything else? Customer: no, bye.")
    return Transcript(" ".join(parts), tuple(pii), tuple(keep))
