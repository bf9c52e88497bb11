//! Currencies as a CRM writes them (ISO codes, names such as `US Dollar` or
//! `Pound Sterling`, symbols in money labels such as `€20,000.00`) → ISO 4217.

use std::collections::HashMap;
use std::sync::LazyLock;

use super::name_key::name_key;

#[path = "currency_table.rs"]
mod table;

/// One row of ISO 4217.
#[derive(Debug)]
pub(super) struct Currency {
    pub code: &'static str,
    pub name: &'static str,
}

/// Names Dynamics (and people) use that differ from the standard's: the
/// standard says `Yen`, Dynamics says `Japanese Yen`. They are applied after
/// the standard's names, so they also settle the names the standard gives
/// two codes (the current one wins).
const NAME_VARIANTS: &[(&str, &str)] = &[
    ("Leone", "SLE"),
    ("Bolívar Soberano", "VES"),
    ("United States Dollar", "USD"),
    ("British Pound", "GBP"),
    ("British Pound Sterling", "GBP"),
    ("UK Pound", "GBP"),
    ("Japanese Yen", "JPY"),
    ("Chinese Yuan", "CNY"),
    ("Chinese Yuan Renminbi", "CNY"),
    ("Renminbi", "CNY"),
    ("South Korean Won", "KRW"),
    ("Korean Won", "KRW"),
    ("South African Rand", "ZAR"),
    ("Polish Zloty", "PLN"),
    ("Hungarian Forint", "HUF"),
    ("Israeli New Shekel", "ILS"),
    ("New Israeli Shekel", "ILS"),
    ("Thai Baht", "THB"),
    ("Indonesian Rupiah", "IDR"),
    ("Vietnamese Dong", "VND"),
    ("Peruvian Sol", "PEN"),
    ("Nigerian Naira", "NGN"),
    ("Ukrainian Hryvnia", "UAH"),
    ("Icelandic Krona", "ISK"),
    ("Pakistani Rupee", "PKR"),
    ("Sri Lankan Rupee", "LKR"),
    ("Bangladeshi Taka", "BDT"),
    ("Qatari Riyal", "QAR"),
    ("Omani Rial", "OMR"),
    ("Emirati Dirham", "AED"),
    ("Philippine Piso", "PHP"),
    ("Kazakhstani Tenge", "KZT"),
    ("Mongolian Tugrik", "MNT"),
];

/// Folded name → code.
static BY_NAME: LazyLock<HashMap<String, &'static str>> = LazyLock::new(|| {
    let standard = table::CURRENCIES.iter().map(|c| (c.name, c.code));
    standard
        .chain(NAME_VARIANTS.iter().copied())
        .map(|(name, code)| (name_key(name), code))
        .collect()
});

/// Currency markers that may stand before or after the amount in a money
/// label, with the currencies each may mean. The first candidate is the
/// reading when the configured default currency is not among them; an
/// empty fallback means the marker alone cannot tell.
struct Symbol {
    marker: &'static str,
    candidates: &'static [&'static str],
    fallback: Option<&'static str>,
}

/// Dollar and peso currencies written with a bare `$`.
const DOLLAR_SIGN_CURRENCIES: &[&str] = &[
    "USD", "CAD", "AUD", "NZD", "SGD", "HKD", "TWD", "BSD", "BBD", "BZD", "BMD", "BND", "KYD",
    "XCD", "FJD", "GYD", "JMD", "LRD", "NAD", "SBD", "SRD", "TTD", "ZWL", "MXN", "ARS", "CLP",
    "COP", "CUP", "DOP", "UYU",
];

const SYMBOLS: &[Symbol] = &[
    Symbol {
        marker: "$",
        candidates: DOLLAR_SIGN_CURRENCIES,
        fallback: Some("USD"),
    },
    Symbol {
        marker: "US$",
        candidates: &["USD"],
        fallback: Some("USD"),
    },
    Symbol {
        marker: "CA$",
        candidates: &["CAD"],
        fallback: Some("CAD"),
    },
    Symbol {
        marker: "C$",
        candidates: &["CAD"],
        fallback: Some("CAD"),
    },
    Symbol {
        marker: "A$",
        candidates: &["AUD"],
        fallback: Some("AUD"),
    },
    Symbol {
        marker: "AU$",
        candidates: &["AUD"],
        fallback: Some("AUD"),
    },
    Symbol {
        marker: "NZ$",
        candidates: &["NZD"],
        fallback: Some("NZD"),
    },
    Symbol {
        marker: "HK$",
        candidates: &["HKD"],
        fallback: Some("HKD"),
    },
    Symbol {
        marker: "S$",
        candidates: &["SGD"],
        fallback: Some("SGD"),
    },
    Symbol {
        marker: "NT$",
        candidates: &["TWD"],
        fallback: Some("TWD"),
    },
    Symbol {
        marker: "MX$",
        candidates: &["MXN"],
        fallback: Some("MXN"),
    },
    Symbol {
        marker: "R$",
        candidates: &["BRL"],
        fallback: Some("BRL"),
    },
    Symbol {
        marker: "€",
        candidates: &["EUR"],
        fallback: Some("EUR"),
    },
    Symbol {
        marker: "£",
        candidates: &["GBP", "GIP", "FKP", "SHP"],
        fallback: Some("GBP"),
    },
    Symbol {
        marker: "¥",
        candidates: &["JPY", "CNY"],
        fallback: Some("JPY"),
    },
    Symbol {
        marker: "JP¥",
        candidates: &["JPY"],
        fallback: Some("JPY"),
    },
    Symbol {
        marker: "CN¥",
        candidates: &["CNY"],
        fallback: Some("CNY"),
    },
    Symbol {
        marker: "元",
        candidates: &["CNY"],
        fallback: Some("CNY"),
    },
    Symbol {
        marker: "RMB",
        candidates: &["CNY"],
        fallback: Some("CNY"),
    },
    Symbol {
        marker: "₹",
        candidates: &["INR"],
        fallback: Some("INR"),
    },
    Symbol {
        marker: "₩",
        candidates: &["KRW"],
        fallback: Some("KRW"),
    },
    Symbol {
        marker: "₽",
        candidates: &["RUB"],
        fallback: Some("RUB"),
    },
    Symbol {
        marker: "₺",
        candidates: &["TRY"],
        fallback: Some("TRY"),
    },
    Symbol {
        marker: "₪",
        candidates: &["ILS"],
        fallback: Some("ILS"),
    },
    Symbol {
        marker: "₫",
        candidates: &["VND"],
        fallback: Some("VND"),
    },
    Symbol {
        marker: "฿",
        candidates: &["THB"],
        fallback: Some("THB"),
    },
    Symbol {
        marker: "₱",
        candidates: &["PHP"],
        fallback: Some("PHP"),
    },
    Symbol {
        marker: "₴",
        candidates: &["UAH"],
        fallback: Some("UAH"),
    },
    Symbol {
        marker: "₦",
        candidates: &["NGN"],
        fallback: Some("NGN"),
    },
    Symbol {
        marker: "₡",
        candidates: &["CRC"],
        fallback: Some("CRC"),
    },
    Symbol {
        marker: "₲",
        candidates: &["PYG"],
        fallback: Some("PYG"),
    },
    Symbol {
        marker: "₸",
        candidates: &["KZT"],
        fallback: Some("KZT"),
    },
    Symbol {
        marker: "₼",
        candidates: &["AZN"],
        fallback: Some("AZN"),
    },
    Symbol {
        marker: "₾",
        candidates: &["GEL"],
        fallback: Some("GEL"),
    },
    Symbol {
        marker: "zł",
        candidates: &["PLN"],
        fallback: Some("PLN"),
    },
    Symbol {
        marker: "Kč",
        candidates: &["CZK"],
        fallback: Some("CZK"),
    },
    Symbol {
        marker: "Ft",
        candidates: &["HUF"],
        fallback: Some("HUF"),
    },
    Symbol {
        marker: "lei",
        candidates: &["RON"],
        fallback: Some("RON"),
    },
    Symbol {
        marker: "лв",
        candidates: &["BGN"],
        fallback: Some("BGN"),
    },
    Symbol {
        marker: "лв.",
        candidates: &["BGN"],
        fallback: Some("BGN"),
    },
    Symbol {
        marker: "Fr.",
        candidates: &["CHF"],
        fallback: Some("CHF"),
    },
    Symbol {
        marker: "RM",
        candidates: &["MYR"],
        fallback: Some("MYR"),
    },
    Symbol {
        marker: "Rp",
        candidates: &["IDR"],
        fallback: Some("IDR"),
    },
    Symbol {
        marker: "R",
        candidates: &["ZAR"],
        fallback: Some("ZAR"),
    },
    Symbol {
        marker: "kr",
        candidates: &["SEK", "NOK", "DKK", "ISK"],
        fallback: None,
    },
    Symbol {
        marker: "kr.",
        candidates: &["SEK", "NOK", "DKK", "ISK"],
        fallback: None,
    },
    Symbol {
        marker: "﷼",
        candidates: &["SAR", "IRR", "OMR", "QAR", "YER"],
        fallback: None,
    },
];

/// What a money label says about its currency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CurrencyMarker {
    /// An ISO 4217 code written in the label (`USD 12,500.00`).
    Code(&'static str),
    /// A symbol (`€`, `$`, `kr`), to be read with the default currency.
    Symbol(&'static str),
}

/// Why a value does not name a currency.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum CurrencyError {
    #[error("unknown ISO 4217 currency code `{0}`")]
    UnknownCode(String),
    #[error("`{marker}` is used by several currencies ({}); add a currency column or set the default currency to one of them", candidates.join(", "))]
    AmbiguousSymbol {
        marker: &'static str,
        candidates: &'static [&'static str],
    },
}

/// The canonical code when `code` (any case) is an ISO 4217 code.
pub(super) fn iso_code(code: &str) -> Option<&'static str> {
    if code.len() != 3 || !code.chars().all(|c| c.is_ascii_alphabetic()) {
        return None;
    }
    let upper = code.to_ascii_uppercase();
    table::CURRENCIES
        .binary_search_by(|c| c.code.cmp(upper.as_str()))
        .ok()
        .map(|index| table::CURRENCIES[index].code)
}

/// A currency name such as `US Dollar`, `Euro` or `Pound Sterling`.
pub(super) fn by_name(name: &str) -> Option<&'static str> {
    BY_NAME.get(&name_key(name)).copied()
}

/// A marker that stands beside the amount in a money label: an ISO code or
/// a symbol (case-insensitive, `kr` = `Kr`).
pub(super) fn marker(text: &str) -> Option<CurrencyMarker> {
    if let Some(code) = iso_code(text) {
        return Some(CurrencyMarker::Code(code));
    }
    let lower = text.to_lowercase();
    SYMBOLS
        .iter()
        .find(|symbol| symbol.marker.to_lowercase() == lower)
        .map(|symbol| CurrencyMarker::Symbol(symbol.marker))
}

/// The currency a marker stands for. A symbol several currencies share is
/// read as the default currency when that is one of them (`$` in a CAD
/// organisation is CAD), otherwise as its usual meaning (`$` → USD).
pub(super) fn resolve_marker(
    marker: CurrencyMarker,
    default_currency: &str,
) -> Result<&'static str, CurrencyError> {
    let marker = match marker {
        CurrencyMarker::Code(code) => return Ok(code),
        CurrencyMarker::Symbol(marker) => marker,
    };
    let Some(symbol) = SYMBOLS.iter().find(|symbol| symbol.marker == marker) else {
        // Markers are only ever made from the table.
        return Err(CurrencyError::UnknownCode(marker.to_owned()));
    };
    if let Some(default) = symbol.candidates.iter().find(|c| **c == default_currency) {
        return Ok(default);
    }
    symbol.fallback.ok_or(CurrencyError::AmbiguousSymbol {
        marker: symbol.marker,
        candidates: symbol.candidates,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn codes_are_recognised_in_any_case() {
        assert_eq!(iso_code("USD"), Some("USD"));
        assert_eq!(iso_code("eur"), Some("EUR"));
        assert_eq!(iso_code("XYZ"), None);
        assert_eq!(iso_code("US"), None);
        assert_eq!(iso_code("U$D"), None);
    }

    #[test]
    fn names_as_dynamics_writes_them() {
        let cases = [
            ("US Dollar", "USD"),
            ("Euro", "EUR"),
            ("Pound Sterling", "GBP"),
            ("Japanese Yen", "JPY"),
            ("Yen", "JPY"),
            ("Swiss Franc", "CHF"),
            ("Canadian Dollar", "CAD"),
            ("Chinese Yuan", "CNY"),
            ("Yuan Renminbi", "CNY"),
            ("Indian Rupee", "INR"),
            ("Brazilian Real", "BRL"),
            ("swedish krona", "SEK"),
            ("Pa’anga", "TOP"),
            ("Bolívar Soberano", "VES"),
        ];
        for (name, code) in cases {
            assert_eq!(by_name(name), Some(code), "name {name:?}");
        }
        assert_eq!(by_name("Galactic Credit"), None);
    }

    #[test]
    fn symbols_read_with_the_default_currency() {
        let cases = [
            ("$", "USD", Ok("USD")),
            ("$", "CAD", Ok("CAD")),
            ("$", "MXN", Ok("MXN")),
            ("$", "EUR", Ok("USD")),
            ("US$", "CAD", Ok("USD")),
            ("€", "USD", Ok("EUR")),
            ("£", "USD", Ok("GBP")),
            ("¥", "CNY", Ok("CNY")),
            ("¥", "USD", Ok("JPY")),
            ("kr", "NOK", Ok("NOK")),
            (
                "kr",
                "USD",
                Err(CurrencyError::AmbiguousSymbol {
                    marker: "kr",
                    candidates: &["SEK", "NOK", "DKK", "ISK"],
                }),
            ),
        ];
        for (text, default, expected) in cases {
            let found = marker(text).unwrap_or_else(|| panic!("{text:?} is a marker"));
            assert_eq!(
                resolve_marker(found, default),
                expected,
                "{text:?} with {default}"
            );
        }
        assert_eq!(marker("Kr"), Some(CurrencyMarker::Symbol("kr")));
        assert_eq!(marker("usd"), Some(CurrencyMarker::Code("USD")));
        assert_eq!(marker("apples"), None);
    }

    #[test]
    fn tables_are_sorted_consistent_and_unambiguous() {
        assert!(table::CURRENCIES.windows(2).all(|w| w[0].code < w[1].code));
        for symbol in SYMBOLS {
            for candidate in symbol.candidates.iter().chain(symbol.fallback.iter()) {
                assert_eq!(
                    iso_code(candidate),
                    Some(*candidate),
                    "symbol {}",
                    symbol.marker
                );
            }
        }
        for (_, code) in NAME_VARIANTS {
            assert_eq!(iso_code(code), Some(*code));
        }
        // A name the standard gives two codes must be settled by a variant;
        // a variant must not repeat a name it does not change.
        let mut standard: HashMap<String, Vec<&str>> = HashMap::new();
        for currency in table::CURRENCIES {
            standard
                .entry(name_key(currency.name))
                .or_default()
                .push(currency.code);
        }
        for (key, codes) in &standard {
            if codes.len() > 1 {
                let settled = NAME_VARIANTS
                    .iter()
                    .find(|(name, _)| name_key(name) == *key);
                assert!(settled.is_some(), "{key:?} is claimed by {codes:?}");
            }
        }
        for (name, code) in NAME_VARIANTS {
            if let Some(codes) = standard.get(&name_key(name)) {
                assert!(
                    codes.len() > 1 && codes.contains(code),
                    "variant {name:?} is redundant"
                );
            }
        }
        assert_eq!(by_name("Leone"), Some("SLE"));
        assert_eq!(by_name("Bolivar Soberano"), Some("VES"));
    }
}
