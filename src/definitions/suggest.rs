//! "Did you mean ...?" for misspelt names.

/// The candidate closest to `word`, if it is close enough to be the likely intent.
pub(crate) fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let word_lower = word.to_lowercase();
    candidates
        .into_iter()
        .map(|c| {
            (
                strsim::damerau_levenshtein(&word_lower, &c.to_lowercase()),
                c,
            )
        })
        .filter(|(d, c)| *c != word && *d <= (c.len().max(word.len()) / 3).max(1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::did_you_mean;

    #[test]
    fn suggests_close_names_only() {
        let keys = ["send", "wait", "wait_for", "switch"];
        assert_eq!(did_you_mean("sned", keys), Some("send"));
        assert_eq!(did_you_mean("wait_fro", keys), Some("wait_for"));
        assert_eq!(did_you_mean("Send", keys), Some("send"));
        assert_eq!(did_you_mean("unrelated", keys), None);
    }
}
