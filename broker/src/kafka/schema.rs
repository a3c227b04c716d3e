//! Kafka's message-schema field types (big-endian integers, strings, bytes, arrays, unsigned
//! varints and the tagged fields of flexible versions), read and written for the records of
//! the internal topics (`__consumer_offsets`, `__transaction_state`), whose layouts Kafka
//! defines with the same schema language as its protocol messages. No I/O happens here.
//!
//! Reading never panics and never sizes an allocation from a count in the bytes: a length
//! larger than what is left is an error.

use bytes::Bytes;

/// Bytes that do not follow the schema; each record module wraps it in its own error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SchemaError(pub String);

type Result<T, E = SchemaError> = std::result::Result<T, E>;

/// Writes fields; `flexible` selects the compact encodings and tagged fields of flexible
/// versions.
#[derive(Debug)]
pub(crate) struct Writer {
    pub buf: Vec<u8>,
    pub flexible: bool,
}

impl Writer {
    pub fn new(capacity: usize, flexible: bool) -> Writer {
        Writer {
            buf: Vec::with_capacity(capacity),
            flexible,
        }
    }
    #[inline]
    pub fn i8(&mut self, v: i8) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }
    #[inline]
    pub fn i16(&mut self, v: i16) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }
    #[inline]
    pub fn i32(&mut self, v: i32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }
    #[inline]
    pub fn i64(&mut self, v: i64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }
    #[inline]
    pub fn uvarint(&mut self, mut v: u64) -> &mut Self {
        while v >= 0x80 {
            self.buf.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.buf.push(v as u8);
        self
    }
    /// An array or bytes length; `None` is null.
    #[inline]
    pub fn len(&mut self, n: Option<usize>) -> &mut Self {
        if self.flexible {
            self.uvarint(n.map_or(0, |n| n as u64 + 1))
        } else {
            self.i32(n.map_or(-1, |n| i32::try_from(n).unwrap_or(i32::MAX)))
        }
    }
    /// A string of at most `i16::MAX` bytes (longer input is cut at a char boundary; callers
    /// only pass strings that came in as Kafka strings, which fit).
    #[inline]
    pub fn string(&mut self, s: &str) -> &mut Self {
        let mut end = s.len().min(i16::MAX as usize);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        if self.flexible {
            self.uvarint(end as u64 + 1);
        } else {
            self.i16(end as i16);
        }
        self.buf.extend_from_slice(&s.as_bytes()[..end]);
        self
    }
    #[inline]
    pub fn nullable_string(&mut self, s: Option<&str>) -> &mut Self {
        match s {
            Some(s) => self.string(s),
            None if self.flexible => self.uvarint(0),
            None => self.i16(-1),
        }
    }
    #[inline]
    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.len(Some(b.len()));
        self.buf.extend_from_slice(b);
        self
    }
    /// A tagged-field section with the given `(tag, bytes)` fields, in tag order (nothing in
    /// a version that is not flexible).
    #[inline]
    pub fn tagged_fields(&mut self, fields: &[(u64, Vec<u8>)]) -> &mut Self {
        if !self.flexible {
            return self;
        }
        self.uvarint(fields.len() as u64);
        for (tag, data) in fields {
            self.uvarint(*tag).uvarint(data.len() as u64);
            self.buf.extend_from_slice(data);
        }
        self
    }
}

/// Reads fields from `buf`; `flexible` as for [`Writer`] (a reader may switch it once it has
/// read the version).
#[derive(Debug)]
pub(crate) struct Reader<'a> {
    pub buf: &'a [u8],
    pub flexible: bool,
}

/// The error of a read past the end; out of line, so the reads stay small enough to inline
/// (Produce requests are read with them, once per field).
#[cold]
#[inline(never)]
fn short(wanted: usize, left: usize) -> SchemaError {
    SchemaError(format!("wanted {wanted} more bytes, {left} left"))
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8], flexible: bool) -> Reader<'a> {
        Reader { buf, flexible }
    }
    /// The bytes not read yet.
    #[inline]
    pub fn left(&self) -> usize {
        self.buf.len()
    }
    #[inline]
    pub fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        match self.buf.split_at_checked(n) {
            Some((head, tail)) => {
                self.buf = tail;
                Ok(head)
            }
            None => Err(short(n, self.buf.len())),
        }
    }
    #[inline]
    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        match self.buf.split_first_chunk::<N>() {
            Some((head, tail)) => {
                self.buf = tail;
                Ok(*head)
            }
            None => Err(short(N, self.buf.len())),
        }
    }
    #[inline]
    pub fn i8(&mut self) -> Result<i8> {
        Ok(i8::from_be_bytes(self.array()?))
    }
    #[inline]
    pub fn i16(&mut self) -> Result<i16> {
        Ok(i16::from_be_bytes(self.array()?))
    }
    #[inline]
    pub fn i32(&mut self) -> Result<i32> {
        Ok(i32::from_be_bytes(self.array()?))
    }
    #[inline]
    pub fn i64(&mut self) -> Result<i64> {
        Ok(i64::from_be_bytes(self.array()?))
    }
    /// An unsigned varint; one byte (every count and length under 128) is read inline.
    #[inline]
    pub fn uvarint(&mut self) -> Result<u64> {
        match self.buf.split_first() {
            Some((&b, tail)) if b < 0x80 => {
                self.buf = tail;
                Ok(u64::from(b))
            }
            _ => self.long_uvarint(),
        }
    }
    #[inline(never)]
    fn long_uvarint(&mut self) -> Result<u64> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.take(1)?[0];
            value |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(SchemaError("varint is too long".into()))
    }
    /// A length: `None` for null (-1, or 0 in its compact form). Outside flexible versions
    /// strings have an `i16` length and bytes and arrays (`wide`) an `i32` one; a negative
    /// length other than -1 is an error.
    #[inline]
    pub fn len(&mut self, wide: bool) -> Result<Option<usize>> {
        let n = if self.flexible {
            match self.uvarint()?.checked_sub(1) {
                None => return Ok(None),
                Some(n) => n,
            }
        } else {
            let n = if wide {
                i64::from(self.i32()?)
            } else {
                i64::from(self.i16()?)
            };
            match n {
                -1 => return Ok(None),
                n if n < 0 => {
                    return Err(SchemaError(format!(
                        "a negative length ({n}) that is not null"
                    )));
                }
                n => n as u64,
            }
        };
        Ok(Some(usize::try_from(n).unwrap_or(usize::MAX)))
    }
    pub fn nullable_string(&mut self) -> Result<Option<String>> {
        match self.len(false)? {
            None => Ok(None),
            Some(n) => String::from_utf8(self.take(n)?.to_vec())
                .map(Some)
                .map_err(|_| SchemaError("a string is not UTF-8".into())),
        }
    }
    pub fn string(&mut self) -> Result<String> {
        self.nullable_string()?
            .ok_or_else(|| SchemaError("a non-null string is null".into()))
    }
    /// Bytes; null reads as empty.
    pub fn bytes(&mut self) -> Result<Bytes> {
        match self.len(true)? {
            None => Ok(Bytes::new()),
            Some(n) => Ok(Bytes::copy_from_slice(self.take(n)?)),
        }
    }
    /// An array length (`None` for null), checked against the bytes left: every element takes
    /// at least `min_element_bytes`, so a corrupt count cannot make a caller allocate much.
    pub fn array_len(&mut self, min_element_bytes: usize) -> Result<Option<usize>> {
        let Some(n) = self.len(true)? else {
            return Ok(None);
        };
        if n.saturating_mul(min_element_bytes) > self.buf.len() {
            return Err(SchemaError(format!(
                "an array claims {n} elements, more than the {} bytes left can hold",
                self.buf.len()
            )));
        }
        Ok(Some(n))
    }
    /// Reads a tagged-field section (nothing in a version that is not flexible), handing each
    /// field to `field` as (tag, bytes); a caller skips the tags it does not know, as Kafka does.
    #[inline]
    pub fn tagged_fields<E: From<SchemaError>>(
        &mut self,
        mut field: impl FnMut(u64, &'a [u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        if !self.flexible {
            return Ok(());
        }
        let n = self.uvarint()?;
        if n == 0 {
            return Ok(());
        }
        self.tagged_fields_slow(n, &mut field)
    }

    #[inline(never)]
    fn tagged_fields_slow<E: From<SchemaError>>(
        &mut self,
        n: u64,
        field: &mut impl FnMut(u64, &'a [u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        for _ in 0..n {
            let tag = self.uvarint()?;
            let size = usize::try_from(self.uvarint()?).unwrap_or(usize::MAX);
            field(tag, self.take(size)?)?;
        }
        Ok(())
    }
    /// Skips a tagged-field section.
    #[inline]
    pub fn skip_tagged_fields(&mut self) -> Result<()> {
        self.tagged_fields(|_, _| Ok::<(), SchemaError>(()))
    }
}
