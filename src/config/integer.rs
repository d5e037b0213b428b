//! Integer values as PMDF option files write them.
//!
//! A value is decimal (`20`, `-1`) or `b%v`: base `b` in decimal (2 to 36), value `v` in that
//! base (`16%FF` = 255, `8%777` = 511, `2%101` = 5). Digits above 9 are letters in either case.
//! A sign may precede the whole value (`-16%1`). Overflow of a 64-bit integer is an error.

/// Why a text is not an integer, in words for the administrator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IntError {
    Empty,
    NotANumber,
    BadRadix(String),
    BadDigit { digit: char, radix: u32 },
    TooLarge,
}

impl std::fmt::Display for IntError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IntError::Empty => write!(f, "no value given"),
            IntError::NotANumber => {
                write!(
                    f,
                    "not a whole number (write it in decimal, or as base%value, e.g. 16%FF)"
                )
            }
            IntError::BadRadix(r) => write!(f, "base `{r}` in base%value must be 2 to 36"),
            IntError::BadDigit { digit, radix } => {
                write!(f, "`{digit}` is not a digit in base {radix}")
            }
            IntError::TooLarge => write!(f, "number too large"),
        }
    }
}

/// Parses a PMDF integer (see the module comment). Surrounding blanks are ignored.
pub fn parse_int(text: &str) -> Result<i64, IntError> {
    let t = text.trim();
    if t.is_empty() {
        return Err(IntError::Empty);
    }
    let (negative, body) = match t.as_bytes()[0] {
        b'-' => (true, &t[1..]),
        b'+' => (false, &t[1..]),
        _ => (false, t),
    };
    let (radix, digits) = match body.split_once('%') {
        Some((r, v)) => {
            let radix: u32 = r.parse().map_err(|_| IntError::BadRadix(r.to_string()))?;
            if !(2..=36).contains(&radix) {
                return Err(IntError::BadRadix(r.to_string()));
            }
            (radix, v)
        }
        None => (10, body),
    };
    if digits.is_empty() {
        return Err(IntError::NotANumber);
    }
    let mut value: i64 = 0;
    for c in digits.chars() {
        let d = match c.to_digit(radix) {
            Some(d) => d,
            None if radix == 10 || !c.is_ascii_alphanumeric() => return Err(IntError::NotANumber),
            None => return Err(IntError::BadDigit { digit: c, radix }),
        };
        value = value
            .checked_mul(i64::from(radix))
            .and_then(|v| v.checked_add(i64::from(d)))
            .ok_or(IntError::TooLarge)?;
    }
    Ok(if negative { -value } else { value })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn documented_examples() {
        assert_eq!(parse_int("16%1F"), Ok(31));
        assert_eq!(parse_int("16%FF"), Ok(255));
        assert_eq!(parse_int("16%ff"), Ok(255));
        assert_eq!(parse_int("8%777"), Ok(511));
        assert_eq!(parse_int("2%101"), Ok(5));
        assert_eq!(parse_int("-1"), Ok(-1));
        assert_eq!(parse_int(" 20 "), Ok(20));
        assert_eq!(parse_int("36%Z"), Ok(35));
    }

    #[test]
    fn rejects_what_is_not_a_number() {
        assert_eq!(parse_int(""), Err(IntError::Empty));
        assert_eq!(parse_int("abc"), Err(IntError::NotANumber));
        assert_eq!(parse_int("1 2"), Err(IntError::NotANumber));
        assert_eq!(parse_int("16%"), Err(IntError::NotANumber));
        assert_eq!(parse_int("1%0"), Err(IntError::BadRadix("1".into())));
        assert_eq!(parse_int("37%0"), Err(IntError::BadRadix("37".into())));
        assert_eq!(parse_int("x%0"), Err(IntError::BadRadix("x".into())));
        assert_eq!(
            parse_int("8%9"),
            Err(IntError::BadDigit {
                digit: '9',
                radix: 8
            })
        );
        assert_eq!(parse_int("99999999999999999999"), Err(IntError::TooLarge));
    }

    /// Writes `v` in `radix` with digits 0-9a-z.
    fn to_radix(mut v: u64, radix: u32) -> String {
        if v == 0 {
            return "0".into();
        }
        let mut s = Vec::new();
        while v > 0 {
            let d = (v % u64::from(radix)) as u32;
            s.push(char::from_digit(d, radix).unwrap_or('?'));
            v /= u64::from(radix);
        }
        s.iter().rev().collect()
    }

    proptest! {
        #[test]
        fn radix_notation_round_trips(v in 0u64..(i64::MAX as u64), radix in 2u32..=36, upper: bool) {
            let digits = to_radix(v, radix);
            let digits = if upper { digits.to_uppercase() } else { digits };
            prop_assert_eq!(parse_int(&format!("{radix}%{digits}")), Ok(v as i64));
            prop_assert_eq!(parse_int(&format!("-{radix}%{digits}")), Ok(-(v as i64)));
        }

        #[test]
        fn decimal_agrees_with_std(v: i64) {
            prop_assert_eq!(parse_int(&v.to_string()), Ok(v));
        }

        #[test]
        fn never_panics(s in "\\PC*") {
            let _ = parse_int(&s);
        }
    }
}
