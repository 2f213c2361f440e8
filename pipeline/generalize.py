"""What analytics keeps of a phone number and of an IP address: facts about the number (country
calling code, type) and the network an address belongs to, never the identifier itself.

An IP address keeps its /24 (IPv4) or /48 (IPv6). An IPv6 address that carries an IPv4 address
keeps that IPv4 address's /24 instead, as if the call had come over IPv4, since a /48 could hold
the whole of it:

  IPv4-mapped   ::ffff:a.b.c.d                   the IPv4 address
  6to4          2002:WWXX:YYZZ::/16 (RFC 3056)   bits 16-47, inside the /48: always taken
  Teredo        2001:0::/32 (RFC 4380)           the client's (the last 32 bits, inverted);
                                                 the /48 would hold half the server's
  NAT64         64:ff9b::/96 (RFC 6052)          the last 32 bits, when a public address
  ISATAP        interface id 0:5efe or 200:5efe  the last 32 bits, when a public address
                (RFC 5214)                       (a private one says less than the site's /48)

NAT64 under a network-specific prefix (RFC 6052's other lengths) cannot be told from any other
address and keeps its /48.
"""

from __future__ import annotations

import ipaddress

import phonenumbers

_TYPE_NAMES = {
    getattr(phonenumbers.PhoneNumberType, n): n.lower()
    for n in vars(phonenumbers.PhoneNumberType)
    if n.isupper()
}
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_ISATAP = (0x0000_5EFE, 0x0200_5EFE)  # bits 64-95: interface id of a private / public IPv4


def phone_facts(number: str) -> tuple[int | None, str]:
    """(country calling code, number type) of an E.164 number; (None, "unknown") otherwise."""
    if not number.startswith("+"):
        return None, "unknown"
    try:
        parsed = phonenumbers.parse(number, None)
    except phonenumbers.NumberParseException:
        return None, "unknown"
    kind = phonenumbers.number_type(parsed)
    return parsed.country_code, _TYPE_NAMES.get(kind, "unknown")


def ip_prefix(value: str) -> str | None:
    """The network prefix of an IP address (/24, /48; an embedded IPv4's /24), or None if it is
    not an address."""
    try:
        ip = ipaddress.ip_address(value.strip())
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address):
        ip = embedded_ipv4(ip) or ip
    bits = 24 if ip.version == 4 else 48
    return str(ipaddress.ip_network(f"{ip}/{bits}", strict=False))


def embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries, by the table in the module's docstring."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    number = int(ip)
    if ip in _NAT64 or (number >> 32) & 0xFFFF_FFFF in _ISATAP:
        last = ipaddress.IPv4Address(number & 0xFFFF_FFFF)
        return last if last.is_global else None
    return None
