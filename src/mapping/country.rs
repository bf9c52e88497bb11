//! Countries as people write them in a CRM → ISO 3166-1 alpha-2, which is
//! what a referral's `customerProfile.address.country` holds.

use std::collections::HashMap;
use std::sync::LazyLock;

use super::name_key::name_key;

#[path = "country_table.rs"]
mod table;

/// One row of ISO 3166-1.
#[derive(Debug)]
pub(super) struct Country {
    pub alpha2: &'static str,
    pub alpha3: &'static str,
    pub numeric: u16,
    pub name: &'static str,
    /// Common and official names from the standard's data set.
    pub other_names: &'static [&'static str],
}

/// Names and codes in use that the standard does not list: short forms,
/// endonyms, former names. Only unambiguous ones: `Korea` or `Congo` alone
/// could be either of two countries, so they are not here.
const VARIANTS: &[(&str, &str)] = &[
    ("America", "US"),
    ("U.S.", "US"),
    ("U.S.A.", "US"),
    ("United States of America", "US"),
    ("UK", "GB"),
    ("Great Britain", "GB"),
    ("Britain", "GB"),
    ("England", "GB"),
    ("Scotland", "GB"),
    ("Wales", "GB"),
    ("Northern Ireland", "GB"),
    ("Deutschland", "DE"),
    ("Österreich", "AT"),
    ("Schweiz", "CH"),
    ("Suisse", "CH"),
    ("Svizzera", "CH"),
    ("Holland", "NL"),
    ("Nederland", "NL"),
    ("België", "BE"),
    ("Belgique", "BE"),
    ("España", "ES"),
    ("Italia", "IT"),
    ("Brasil", "BR"),
    ("Sverige", "SE"),
    ("Norge", "NO"),
    ("Danmark", "DK"),
    ("Suomi", "FI"),
    ("Polska", "PL"),
    ("Éire", "IE"),
    ("Republic of Ireland", "IE"),
    ("Czech Republic", "CZ"),
    ("Russia", "RU"),
    ("Turkey", "TR"),
    ("Republic of Korea", "KR"),
    ("Korea (South)", "KR"),
    ("Korea (North)", "KP"),
    ("Ivory Coast", "CI"),
    ("Macedonia", "MK"),
    ("Swaziland", "SZ"),
    ("Burma", "MM"),
    ("Cape Verde", "CV"),
    ("East Timor", "TL"),
    ("Vatican", "VA"),
    ("Vatican City", "VA"),
    ("Palestine", "PS"),
    ("Micronesia", "FM"),
    ("Democratic Republic of the Congo", "CD"),
    ("DR Congo", "CD"),
    ("DRC", "CD"),
    ("Congo-Kinshasa", "CD"),
    ("Republic of the Congo", "CG"),
    ("Congo-Brazzaville", "CG"),
    ("Brunei", "BN"),
    ("Macau", "MO"),
    ("UAE", "AE"),
    ("Emirates", "AE"),
    ("Bosnia", "BA"),
    ("Bosnia-Herzegovina", "BA"),
    ("Saint Helena", "SH"),
    ("US Virgin Islands", "VI"),
    ("Federated States of Micronesia", "FM"),
];

/// Folded name → alpha-2.
static BY_NAME: LazyLock<HashMap<String, &'static str>> = LazyLock::new(|| {
    let mut by_name = HashMap::new();
    for country in table::COUNTRIES {
        let names = std::iter::once(country.name).chain(country.other_names.iter().copied());
        for name in names {
            by_name.insert(name_key(name), country.alpha2);
            // `Falkland Islands (Malvinas)` is written `Falkland Islands`.
            if let Some(open) = name.find(" (") {
                by_name.insert(name_key(&name[..open]), country.alpha2);
            }
        }
    }
    for (name, alpha2) in VARIANTS {
        by_name.insert(name_key(name), alpha2);
    }
    by_name
});

/// Why a value is not a country.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum CountryError {
    #[error("unknown ISO 3166 country code `{0}`")]
    UnknownCode(String),
    #[error(
        "unknown country `{0}`: expected an ISO 3166 alpha-2 or alpha-3 code or an English country name"
    )]
    UnknownName(String),
}

/// An alpha-2 or alpha-3 code (any case), an ISO numeric code, or a
/// country name → alpha-2. `input` must not be blank.
pub(super) fn country_alpha2(input: &str) -> Result<&'static str, CountryError> {
    let input = input.trim();
    let is_letters = input.chars().all(|c| c.is_ascii_alphabetic());
    if is_letters && input.len() == 2 {
        let code = input.to_ascii_uppercase();
        // `UK` is reserved by ISO for the United Kingdom and used everywhere.
        if code == "UK" {
            return Ok("GB");
        }
        return by_alpha2(&code).ok_or_else(|| CountryError::UnknownCode(input.to_owned()));
    }
    if is_letters && input.len() == 3 {
        let code = input.to_ascii_uppercase();
        if let Some(country) = table::COUNTRIES.iter().find(|c| c.alpha3 == code) {
            return Ok(country.alpha2);
        }
        // Not a code; three letters may still be a known short name (`UAE`).
    }
    if input.len() == 3 && input.chars().all(|c| c.is_ascii_digit()) {
        let numeric: u16 = input
            .parse()
            .map_err(|_| CountryError::UnknownCode(input.to_owned()))?;
        return table::COUNTRIES
            .iter()
            .find(|c| c.numeric == numeric)
            .map(|c| c.alpha2)
            .ok_or_else(|| CountryError::UnknownCode(input.to_owned()));
    }
    BY_NAME
        .get(&name_key(input))
        .copied()
        .ok_or_else(|| CountryError::UnknownName(input.to_owned()))
}

fn by_alpha2(code: &str) -> Option<&'static str> {
    table::COUNTRIES
        .binary_search_by(|c| c.alpha2.cmp(code))
        .ok()
        .map(|index| table::COUNTRIES[index].alpha2)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn codes_and_names_become_alpha2() {
        let cases = [
            ("US", "US"),
            ("us", "US"),
            ("USA", "US"),
            ("840", "US"),
            ("United States", "US"),
            ("United States of America", "US"),
            ("U.S.A.", "US"),
            ("U.S.", "US"),
            ("U.S.A.", "US"),
            ("UK", "GB"),
            ("United Kingdom", "GB"),
            ("GBR", "GB"),
            ("Deutschland", "DE"),
            ("Germany", "DE"),
            ("  ireland ", "IE"),
            ("Brazil", "BR"),
            ("Côte d'Ivoire", "CI"),
            ("Cote dIvoire", "CI"),
            ("Ivory Coast", "CI"),
            ("South Korea", "KR"),
            ("Korea, Republic of", "KR"),
            ("North Korea", "KP"),
            ("Viet Nam", "VN"),
            ("Vietnam", "VN"),
            ("Türkiye", "TR"),
            ("Turkey", "TR"),
            ("Czechia", "CZ"),
            ("Czech Republic", "CZ"),
            ("The Netherlands", "NL"),
            ("Russian Federation", "RU"),
            ("Falkland Islands", "FK"),
            ("Holy See", "VA"),
            ("St. Lucia", "LC"),
            ("Saint Kitts & Nevis", "KN"),
            ("Bonaire, Sint Eustatius and Saba", "BQ"),
            ("UAE", "AE"),
            ("Congo", "CG"),
            ("DRC", "CD"),
            ("Åland Islands", "AX"),
        ];
        for (input, expected) in cases {
            assert_eq!(country_alpha2(input), Ok(expected), "input {input:?}");
        }
    }

    #[test]
    fn unknown_countries_are_errors_not_guesses() {
        let cases = [
            ("XX", CountryError::UnknownCode("XX".into())),
            ("999", CountryError::UnknownCode("999".into())),
            ("Atlantis", CountryError::UnknownName("Atlantis".into())),
            ("Korea", CountryError::UnknownName("Korea".into())),
            (
                "Virgin Islands",
                CountryError::UnknownName("Virgin Islands".into()),
            ),
            ("ZZZ", CountryError::UnknownName("ZZZ".into())),
        ];
        for (input, expected) in cases {
            assert_eq!(country_alpha2(input), Err(expected), "input {input:?}");
        }
    }

    #[test]
    fn table_is_complete_sorted_and_unambiguous() {
        assert_eq!(table::COUNTRIES.len(), 249);
        assert!(
            table::COUNTRIES
                .windows(2)
                .all(|w| w[0].alpha2 < w[1].alpha2)
        );
        // Every code resolves to itself.
        for country in table::COUNTRIES {
            assert_eq!(country_alpha2(country.alpha2), Ok(country.alpha2));
            assert_eq!(country_alpha2(country.alpha3), Ok(country.alpha2));
            assert_eq!(country_alpha2(country.name), Ok(country.alpha2));
        }
        // No folded name is claimed by two countries (a later insert would
        // silently win).
        let mut seen: HashMap<String, &str> = HashMap::new();
        let standard = table::COUNTRIES.iter().flat_map(|c| {
            std::iter::once((c.name, c.alpha2))
                .chain(c.other_names.iter().map(move |name| (*name, c.alpha2)))
        });
        for (name, alpha2) in standard.chain(VARIANTS.iter().copied()) {
            if let Some(previous) = seen.insert(name_key(name), alpha2) {
                assert_eq!(previous, alpha2, "{name:?} is claimed twice");
            }
        }
    }
}
