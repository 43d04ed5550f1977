"""Country codes from Vast's free-form ``geolocation`` strings ("Kyiv, UA", "Guangdong, China", "CN")."""

from __future__ import annotations

import re

# English names (and common variants) hosts put after the last comma instead of an ISO code.
COUNTRY_NAMES: dict[str, str] = {
    "afghanistan": "AF", "albania": "AL", "algeria": "DZ", "argentina": "AR", "armenia": "AM",
    "australia": "AU", "austria": "AT", "azerbaijan": "AZ", "bahrain": "BH", "bangladesh": "BD",
    "belarus": "BY", "belgium": "BE", "bolivia": "BO", "bosnia and herzegovina": "BA", "brazil": "BR",
    "bulgaria": "BG", "cambodia": "KH", "canada": "CA", "chile": "CL", "china": "CN",
    "people's republic of china": "CN", "prc": "CN", "mainland china": "CN", "colombia": "CO",
    "costa rica": "CR", "croatia": "HR", "cyprus": "CY", "czechia": "CZ", "czech republic": "CZ",
    "denmark": "DK", "ecuador": "EC", "egypt": "EG", "estonia": "EE", "finland": "FI", "france": "FR",
    "georgia": "GE", "germany": "DE", "deutschland": "DE", "greece": "GR", "hong kong": "HK",
    "hong kong sar": "HK", "hungary": "HU", "iceland": "IS", "india": "IN", "indonesia": "ID",
    "iran": "IR", "iraq": "IQ", "ireland": "IE", "israel": "IL", "italy": "IT", "japan": "JP",
    "jordan": "JO", "kazakhstan": "KZ", "kenya": "KE", "korea": "KR", "south korea": "KR",
    "republic of korea": "KR", "korea, republic of": "KR", "north korea": "KP", "kuwait": "KW",
    "kyrgyzstan": "KG", "latvia": "LV", "lebanon": "LB", "lithuania": "LT", "luxembourg": "LU",
    "macao": "MO", "macau": "MO", "malaysia": "MY", "malta": "MT", "mexico": "MX", "moldova": "MD",
    "mongolia": "MN", "montenegro": "ME", "morocco": "MA", "nepal": "NP", "netherlands": "NL",
    "the netherlands": "NL", "holland": "NL", "new zealand": "NZ", "nigeria": "NG",
    "north macedonia": "MK", "norway": "NO", "oman": "OM", "pakistan": "PK", "panama": "PA",
    "peru": "PE", "philippines": "PH", "poland": "PL", "portugal": "PT", "qatar": "QA",
    "romania": "RO", "russia": "RU", "russian federation": "RU", "saudi arabia": "SA", "serbia": "RS",
    "singapore": "SG", "slovakia": "SK", "slovenia": "SI", "south africa": "ZA", "spain": "ES",
    "sri lanka": "LK", "sweden": "SE", "switzerland": "CH", "taiwan": "TW", "thailand": "TH",
    "tunisia": "TN", "turkey": "TR", "türkiye": "TR", "turkiye": "TR", "ukraine": "UA",
    "united arab emirates": "AE", "uae": "AE", "united kingdom": "GB", "uk": "GB",
    "great britain": "GB", "england": "GB", "scotland": "GB", "wales": "GB", "united states": "US",
    "united states of america": "US", "usa": "US", "us": "US", "america": "US", "uruguay": "UY",
    "uzbekistan": "UZ", "venezuela": "VE", "vietnam": "VN", "viet nam": "VN",
}  # fmt: skip

_CODE = re.compile(r"^[A-Za-z]{2}$")


def normalize_country(value: str | None) -> str | None:
    """An ISO-2 code for ``value`` given as a code ("cn") or an English name ("China"); else None."""
    if value is None:
        return None
    text = " ".join(value.strip().split())
    if _CODE.match(text):
        return text.upper()
    return COUNTRY_NAMES.get(text.lower())


def country_of(geolocation: str | None) -> str | None:
    """ISO-2 code from a Vast ``geolocation`` string: the text after the last comma; None if unknown."""
    if not geolocation or not isinstance(geolocation, str):
        return None
    parts = geolocation.split(",")
    code = normalize_country(parts[-1])
    if code is None and len(parts) > 1:
        # Names that contain a comma themselves, e.g. "Seoul, Korea, Republic of".
        code = COUNTRY_NAMES.get(" ".join(",".join(parts[-2:]).split()).lower())
    return code
