//! "Did you mean `address`?": the closest allowed name to a misspelt one, by edit distance.

/// Names longer than this get no suggestion (and cost nothing to compare).
const MAX_LEN: usize = 64;

/// The allowed name closest to `given`, when it is close enough to be a likely typo: at most
/// one edit per three characters (case and `-`/`_` differences are free).
pub(crate) fn closest<'a>(
    given: &str,
    allowed: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let given = normalize(given)?;
    let limit = (given.len() / 3).max(1);
    allowed
        .into_iter()
        .filter_map(|candidate| {
            let distance = levenshtein(&given, &normalize(candidate)?);
            (distance <= limit).then_some((distance, candidate))
        })
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| candidate)
}

/// `` `a`, `b`, `c` ``
pub(crate) fn list(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn normalize(name: &str) -> Option<Vec<char>> {
    if name.is_empty() || name.len() > MAX_LEN {
        return None;
    }
    Some(
        name.chars()
            .map(|c| {
                if c == '-' {
                    '_'
                } else {
                    c.to_ascii_lowercase()
                }
            })
            .collect(),
    )
}

fn levenshtein(a: &[char], b: &[char]) -> usize {
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    let mut current = vec![0; b.len() + 1];
    for (i, ca) in a.iter().enumerate() {
        current[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitute = previous[j] + usize::from(ca != cb);
            current[j + 1] = substitute.min(previous[j + 1] + 1).min(current[j] + 1);
        }
        std::mem::swap(&mut previous, &mut current);
    }
    previous[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    const LISTENER: [&str; 5] = ["name", "address", "proxy_headers", "routes", "idle_timeout"];

    #[test]
    fn suggests_close_names_only() {
        assert_eq!(closest("adress", LISTENER), Some("address"));
        assert_eq!(closest("route", LISTENER), Some("routes"));
        assert_eq!(closest("idle-timeout", LISTENER), Some("idle_timeout"));
        assert_eq!(closest("Name", LISTENER), Some("name"));
        assert_eq!(closest("backends", LISTENER), None);
        assert_eq!(closest("", LISTENER), None);
        assert_eq!(closest(&"x".repeat(1000), LISTENER), None);
    }

    #[test]
    fn edit_distance() {
        let d = |a: &str, b: &str| {
            levenshtein(
                &a.chars().collect::<Vec<_>>(),
                &b.chars().collect::<Vec<_>>(),
            )
        };
        assert_eq!(d("kitten", "sitting"), 3);
        assert_eq!(d("", "abc"), 3);
        assert_eq!(d("abc", "abc"), 0);
    }
}
