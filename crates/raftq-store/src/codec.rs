//! bincode as raftq writes it to disk and sends it to peers (the fixed-width encoding of
//! `bincode::serialize`), decoded within a byte limit: a damaged length prefix is an error,
//! never an allocation of whatever size it claims.

use std::io::Read;

use bincode::Options as _;

fn options() -> impl bincode::Options {
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .allow_trailing_bytes()
}

/// Decodes `bytes`, reading (and so allocating) no more than `bytes.len()` bytes.
pub fn decode_within<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> bincode::Result<T> {
    options().with_limit(bytes.len() as u64).deserialize(bytes)
}

/// Decodes one value from `reader`, reading no more than `limit` bytes.
pub fn decode_from_within<T: serde::de::DeserializeOwned>(
    reader: impl Read,
    limit: u64,
) -> bincode::Result<T> {
    options().with_limit(limit).deserialize_from(reader)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_what_bincode_serialize_wrote() {
        let value = (7u64, vec![1u8, 2, 3], String::from("queue"));
        let bytes = bincode::serialize(&value).unwrap();
        assert_eq!(
            decode_within::<(u64, Vec<u8>, String)>(&bytes).unwrap(),
            value
        );
    }

    #[test]
    fn a_length_prefix_past_the_input_is_an_error_not_an_allocation() {
        let mut bytes = bincode::serialize(&vec![0u8; 16]).unwrap();
        // The prefix now claims about 4 EiB of bytes.
        bytes[..8].copy_from_slice(&(u64::MAX / 4).to_le_bytes());
        assert!(decode_within::<Vec<u8>>(&bytes).is_err());
        let mut strings = bincode::serialize(&vec![String::from("a"); 4]).unwrap();
        strings[..8].copy_from_slice(&(u64::MAX / 4).to_le_bytes());
        assert!(decode_within::<Vec<String>>(&strings).is_err());
    }
}
