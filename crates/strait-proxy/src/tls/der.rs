//! Reading DER by hand, for the few fields the TLS code needs from certificates and OCSP
//! responses (a full ASN.1 parser would be a dependency for a dozen lines).

/// The contents of the element at the start of `input` if it has tag `tag`, and what follows.
pub(super) fn expect(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    match tlv(input)? {
        (t, contents, rest) if t == tag => Some((contents, rest)),
        _ => None,
    }
}

/// The DER element at the start of `input`: its tag, its contents and what follows it.
pub(super) fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let (bytes, rest) = (rest.get(..n)?, rest.get(n..)?);
        (
            bytes.iter().fold(0, |len, &b| len << 8 | usize::from(b)),
            rest,
        )
    };
    Some((tag, rest.get(..len)?, rest.get(len..)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_in_long_form_are_read() {
        let mut long = vec![0x04, 0x81, 200];
        long.extend(std::iter::repeat_n(7u8, 200));
        long.push(0x05);
        let (tag, contents, rest) = tlv(&long).unwrap_or_default();
        assert_eq!((tag, contents.len(), rest), (0x04, 200, &[0x05][..]));
    }
}
