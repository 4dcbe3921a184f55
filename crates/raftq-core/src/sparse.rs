//! [`Sparse`]: a field that is usually empty, kept as one pointer.

use std::collections::BTreeMap;
use std::ops::Deref;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::command::{AcknowledgementRequest, MessageProperties};

/// A type with an empty value that most stored messages have.
pub trait Empty: PartialEq + Sized + 'static {
    const EMPTY: &'static Self;
}

impl Empty for MessageProperties {
    const EMPTY: &'static Self = &MessageProperties {
        label: String::new(),
        correlation_id: String::new(),
        reply_to: String::new(),
        content_type: String::new(),
    };
}

impl Empty for AcknowledgementRequest {
    const EMPTY: &'static Self = &AcknowledgementRequest {
        queue: String::new(),
        positive: false,
        negative: false,
    };
}

impl Empty for String {
    const EMPTY: &'static Self = &String::new();
}

impl Empty for BTreeMap<String, String> {
    const EMPTY: &'static Self = &BTreeMap::new();
}

/// A value that is usually [`Empty::EMPTY`], held as one pointer that is null for the empty
/// value. A backlog of a million messages keeps a million of each field it has; most are
/// empty, and this keeps each such field at 8 bytes instead of the value's full size.
/// It reads as the value (`Deref`) and is (de)serialized exactly as the value.
#[derive(Debug, Clone)]
pub struct Sparse<T: Empty>(Option<Box<T>>);

/// Equal by value: an emptied value equals one that was never set.
impl<T: Empty> PartialEq for Sparse<T> {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl<T: Empty + Eq> Eq for Sparse<T> {}

impl<T: Empty> Sparse<T> {
    /// The empty value, for constants.
    pub const NONE: Self = Sparse(None);

    pub fn new(value: T) -> Self {
        if value == *T::EMPTY {
            Sparse(None)
        } else {
            Sparse(Some(Box::new(value)))
        }
    }

    /// The value, for changing it in place.
    pub fn make_mut(&mut self) -> &mut T
    where
        T: Clone,
    {
        self.0.get_or_insert_with(|| Box::new(T::EMPTY.clone()))
    }

    pub fn into_inner(self) -> T
    where
        T: Clone,
    {
        match self.0 {
            Some(value) => *value,
            None => T::EMPTY.clone(),
        }
    }
}

impl<T: Empty> Default for Sparse<T> {
    fn default() -> Self {
        Sparse(None)
    }
}

impl<T: Empty> From<T> for Sparse<T> {
    fn from(value: T) -> Self {
        Sparse::new(value)
    }
}

impl<T: Empty> Deref for Sparse<T> {
    type Target = T;

    fn deref(&self) -> &T {
        self.0.as_deref().unwrap_or(T::EMPTY)
    }
}

impl<T: Empty + Serialize> Serialize for Sparse<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        (**self).serialize(serializer)
    }
}

impl<'de, T: Empty + Deserialize<'de>> Deserialize<'de> for Sparse<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        T::deserialize(deserializer).map(Sparse::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sparse_value_is_encoded_as_the_value_and_empty_takes_no_allocation() {
        let label = MessageProperties {
            label: "x".into(),
            ..MessageProperties::default()
        };
        for value in [MessageProperties::default(), label] {
            let sparse = Sparse::new(value.clone());
            assert_eq!(sparse.0.is_none(), value == MessageProperties::default());
            let bytes = bincode::serialize(&sparse).unwrap();
            assert_eq!(bytes, bincode::serialize(&value).unwrap());
            let back: Sparse<MessageProperties> = bincode::deserialize(&bytes).unwrap();
            assert_eq!(back, sparse);
        }
        let mut headers: Sparse<BTreeMap<String, String>> = Sparse::default();
        headers.make_mut().insert("k".into(), "v".into());
        assert_eq!(headers["k"], "v");
        assert_eq!(std::mem::size_of::<Sparse<MessageProperties>>(), 8);
    }
}
