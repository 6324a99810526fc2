//! LEB128 unsigned varints and zig-zag signed varints, with checked decoding.

/// Append `v` as an unsigned LEB128 varint.
#[inline]
pub fn put_u64(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Append `v` zig-zag encoded.
#[inline]
pub fn put_i64(out: &mut Vec<u8>, v: i64) {
    put_u64(out, ((v << 1) ^ (v >> 63)) as u64);
}

/// A cursor over varint-coded bytes; every read is bounds-checked.
#[derive(Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

/// The input ended inside a value, or a varint was longer than 10 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VarintError;

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    /// Bytes not yet read.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    #[inline]
    pub fn u64(&mut self) -> Result<u64, VarintError> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = *self.buf.get(self.pos).ok_or(VarintError)?;
            self.pos += 1;
            if shift == 63 && b > 1 {
                return Err(VarintError);
            }
            v |= ((b & 0x7f) as u64) << shift;
            if b < 0x80 {
                return Ok(v);
            }
        }
        Err(VarintError)
    }

    #[inline]
    pub fn i64(&mut self) -> Result<i64, VarintError> {
        let u = self.u64()?;
        Ok(((u >> 1) as i64) ^ -((u & 1) as i64))
    }

    #[inline]
    pub fn u8(&mut self) -> Result<u8, VarintError> {
        let b = *self.buf.get(self.pos).ok_or(VarintError)?;
        self.pos += 1;
        Ok(b)
    }

    /// Take `n` raw bytes.
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], VarintError> {
        let end = self.pos.checked_add(n).ok_or(VarintError)?;
        let s = self.buf.get(self.pos..end).ok_or(VarintError)?;
        self.pos = end;
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn roundtrip(us in proptest::collection::vec(any::<u64>(), 0..50),
                     is in proptest::collection::vec(any::<i64>(), 0..50)) {
            let mut buf = Vec::new();
            for u in &us { put_u64(&mut buf, *u); }
            for i in &is { put_i64(&mut buf, *i); }
            let mut r = Reader::new(&buf);
            for u in &us { prop_assert_eq!(r.u64().unwrap(), *u); }
            for i in &is { prop_assert_eq!(r.i64().unwrap(), *i); }
            prop_assert_eq!(r.remaining(), 0);
        }
    }

    #[test]
    fn truncated_and_overlong_are_errors() {
        assert_eq!(Reader::new(&[0x80]).u64(), Err(VarintError));
        assert_eq!(Reader::new(&[0xff; 11]).u64(), Err(VarintError));
        assert_eq!(Reader::new(&[]).u8(), Err(VarintError));
    }
}
