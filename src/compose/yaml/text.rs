//! [`Text`], the string of a YAML scalar: short ones (keys, `unless-stopped`, `tcp`) kept inline
//! in the node, longer ones in one exact-size heap block.
//!
//! A compose file of 10,000 services has about 500,000 scalars, most of them shorter than a
//! `String`'s three words. A heap block for each was most of the loader's time spent in the
//! allocator (allocating while parsing, and freeing while dropping a tree that no longer fits
//! in the caches); inline, building and dropping such a scalar does not touch the allocator.

use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;

/// Bytes kept inline: with the length byte and the variant's tag, `Text` is as large as a
/// `String` (24 bytes), so a [`super::Value`] does not grow.
const INLINE: usize = 22;

/// An immutable string; derefs to `str`.
#[derive(Clone)]
pub struct Text(Repr);

#[derive(Clone)]
enum Repr {
    Inline { len: u8, bytes: [u8; INLINE] },
    Heap(Box<str>),
}

impl Text {
    pub fn new(s: &str) -> Text {
        match u8::try_from(s.len()) {
            Ok(len) if s.len() <= INLINE => {
                let mut bytes = [0; INLINE];
                bytes[..s.len()].copy_from_slice(s.as_bytes());
                Text(Repr::Inline { len, bytes })
            }
            _ => Text(Repr::Heap(s.into())),
        }
    }

    pub fn as_str(&self) -> &str {
        match &self.0 {
            // Checking the bytes again on every read cost 3% of a load (keys are read often).
            // SAFETY: an inline `Text` is only made by `Text::new`, which copies a whole `str`
            // (`len` bytes, ending at its end) and never changes it after: `bytes[..len]` is
            // that `str`'s UTF-8.
            Repr::Inline { len, bytes } => unsafe {
                std::str::from_utf8_unchecked(bytes.get(..usize::from(*len)).unwrap_or_default())
            },
            Repr::Heap(s) => s,
        }
    }
}

impl Deref for Text {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for Text {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl Borrow<str> for Text {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl From<&str> for Text {
    fn from(s: &str) -> Text {
        Text::new(s)
    }
}

impl From<String> for Text {
    fn from(s: String) -> Text {
        if s.len() <= INLINE {
            Text::new(&s)
        } else {
            Text(Repr::Heap(s.into_boxed_str()))
        }
    }
}

impl From<&String> for Text {
    fn from(s: &String) -> Text {
        Text::new(s)
    }
}

impl From<Text> for String {
    fn from(t: Text) -> String {
        match t.0 {
            Repr::Heap(s) => s.into_string(),
            Repr::Inline { .. } => t.as_str().to_string(),
        }
    }
}

impl PartialEq for Text {
    fn eq(&self, other: &Text) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Text {}

impl PartialEq<str> for Text {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Text {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl fmt::Debug for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self.as_str(), f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_and_long_texts_read_back_as_written() {
        let long = "x".repeat(INLINE + 1);
        for s in [
            "",
            "a",
            "unless-stopped",
            "é€😀",
            &"y".repeat(INLINE),
            &long,
        ] {
            let t = Text::new(s);
            assert_eq!(t.as_str(), s);
            assert_eq!(Text::from(s.to_string()), t);
            assert_eq!(String::from(t.clone()), s);
            assert_eq!(format!("{t:?}"), format!("{s:?}"));
        }
        assert!(matches!(Text::new("unless-stopped").0, Repr::Inline { .. }));
        assert!(matches!(Text::new(&long).0, Repr::Heap(_)));
        assert_eq!(std::mem::size_of::<Text>(), std::mem::size_of::<String>());
    }
}
