//! The state file's envelope: a fixed header (magic, format version,
//! payload length, CRC-32 of the payload) before the JSON payload, so a
//! truncated, corrupted or foreign file is refused before it is parsed.
//!
//! CRC-32 is written here (a dozen lines) rather than pulled in as a crate:
//! none of the project's dependencies provides one.

/// First bytes of every state file.
pub const MAGIC: [u8; 8] = *b"ALTOSNAP";
/// The format this build writes and reads. Bumped whenever the payload
/// changes in a way older builds would misread.
pub const VERSION: u32 = 1;
/// Header length: magic, version, flags (0), payload length, CRC-32.
pub const HEADER_LEN: usize = 8 + 4 + 4 + 8 + 4;

/// Wraps `payload` in the header.
pub fn encode(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc32(payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// Checks the header of `bytes` and returns the payload, or says in a few
/// words what is wrong.
pub fn decode(bytes: &[u8]) -> Result<&[u8], String> {
    if bytes.len() < HEADER_LEN {
        return Err(format!(
            "not an altovirt snapshot state file (only {} bytes)",
            bytes.len()
        ));
    }
    let (header, payload) = bytes.split_at(HEADER_LEN);
    if header[..8] != MAGIC {
        return Err("not an altovirt snapshot state file (bad magic)".into());
    }
    let word = |at: usize| {
        u32::from_le_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]])
    };
    let version = word(8);
    if version != VERSION {
        return Err(format!(
            "snapshot format version {version}, this altovirt reads version {VERSION}"
        ));
    }
    let mut len = [0u8; 8];
    len.copy_from_slice(&header[16..24]);
    let len = u64::from_le_bytes(len);
    if len != payload.len() as u64 {
        return Err(format!(
            "truncated or padded: the header says {len} bytes of state, the file has {}",
            payload.len()
        ));
    }
    let want = word(24);
    let got = crc32(payload);
    if want != got {
        return Err(format!(
            "corrupted: checksum {got:#010x}, expected {want:#010x}"
        ));
    }
    Ok(payload)
}

/// CRC-32 (IEEE 802.3, reflected, as zlib computes it).
pub fn crc32(data: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut table = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 {
                    0xedb8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
                k += 1;
            }
            table[i] = c;
            i += 1;
        }
        table
    };
    let mut crc = !0u32;
    for &b in data {
        crc = TABLE[((crc ^ u32::from(b)) & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn round_trip() {
        let file = encode(b"{\"a\":1}");
        assert_eq!(decode(&file).unwrap(), b"{\"a\":1}");
    }

    #[test]
    fn damage_is_named() {
        let file = encode(b"{\"a\":1}");
        let short = &file[..file.len() - 1];
        assert!(decode(short).unwrap_err().contains("truncated"));
        let mut flipped = file.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(decode(&flipped).unwrap_err().contains("corrupted"));
        let mut other = file.clone();
        other[8] = 9;
        assert!(decode(&other).unwrap_err().contains("version 9"));
        assert!(decode(b"hello").unwrap_err().contains("not an altovirt"));
        let mut magic = file;
        magic[0] = b'X';
        assert!(decode(&magic).unwrap_err().contains("bad magic"));
    }
}
