//! Where an answer's body ends, without I/O: `Content-Length`, chunked
//! (chunk extensions and trailers read and dropped), or the end of the
//! connection.

use super::{H1Error, MAX_CHUNK_LINE, MAX_HEAD};
use bytes::{Buf, Bytes, BytesMut};

/// How the end of an answer's body is found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Framing {
    /// This many bytes are left.
    Length(u64),
    Chunked(ChunkState),
    /// The body ends with the connection.
    UntilClose,
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ChunkState {
    /// At a chunk-size line.
    Size,
    /// Inside a chunk, this many bytes left.
    Data(u64),
    /// At the CRLF after a chunk's data.
    DataEnd,
    /// After the last (zero) chunk: trailer lines up to an empty one.
    Trailers,
}

/// What decoding the buffer gave.
pub(super) enum Decoded {
    Data(Bytes),
    /// More bytes are needed.
    NeedMore,
    End,
}

/// One step of decoding at a position in a buffer.
enum Step {
    /// Body bytes at `start..start + len`.
    Data(usize, usize),
    NeedMore,
    End,
}

impl Framing {
    /// Decodes the next piece of body from `buf`, consuming it.
    pub(super) fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, H1Error> {
        let mut pos = 0;
        let step = self.decode_at(buf, &mut pos);
        let out = match step? {
            Step::Data(start, len) => {
                buf.advance(start);
                let data = buf.split_to(len).freeze();
                buf.advance(pos - start - len);
                return Ok(Decoded::Data(data));
            }
            Step::NeedMore => Decoded::NeedMore,
            Step::End => Decoded::End,
        };
        buf.advance(pos);
        Ok(out)
    }

    /// Decodes the next piece of body from `buf[*pos..]` without consuming
    /// it: `*pos` moves past what was decoded (framing and data).
    fn decode_at(&mut self, buf: &[u8], pos: &mut usize) -> Result<Step, H1Error> {
        loop {
            let rest = &buf[*pos..];
            match self {
                Framing::Done | Framing::Length(0) => {
                    *self = Framing::Done;
                    return Ok(Step::End);
                }
                Framing::Length(left) => {
                    if rest.is_empty() {
                        return Ok(Step::NeedMore);
                    }
                    let n = (*left).min(rest.len() as u64) as usize;
                    *left -= n as u64;
                    let start = *pos;
                    *pos += n;
                    return Ok(Step::Data(start, n));
                }
                Framing::UntilClose => {
                    if rest.is_empty() {
                        return Ok(Step::NeedMore);
                    }
                    let start = *pos;
                    *pos = buf.len();
                    return Ok(Step::Data(start, rest.len()));
                }
                Framing::Chunked(state) => match state {
                    ChunkState::Size => {
                        let Some(end) = find_crlf(rest) else {
                            if rest.len() > MAX_CHUNK_LINE {
                                return Err(H1Error::Invalid("chunk size line too long".into()));
                            }
                            return Ok(Step::NeedMore);
                        };
                        let digits = rest[..end]
                            .split(|b| *b == b';')
                            .next()
                            .unwrap_or_default()
                            .trim_ascii();
                        if digits.is_empty() || digits.len() > 15 {
                            return Err(H1Error::Invalid("bad chunk size".into()));
                        }
                        let size = std::str::from_utf8(digits)
                            .ok()
                            .and_then(|d| u64::from_str_radix(d, 16).ok())
                            .ok_or_else(|| H1Error::Invalid("bad chunk size".into()))?;
                        *pos += end + 2;
                        *state = if size == 0 {
                            ChunkState::Trailers
                        } else {
                            ChunkState::Data(size)
                        };
                    }
                    ChunkState::Data(left) => {
                        if rest.is_empty() {
                            return Ok(Step::NeedMore);
                        }
                        let n = (*left).min(rest.len() as u64) as usize;
                        *left -= n as u64;
                        if *left == 0 {
                            *state = ChunkState::DataEnd;
                        }
                        let start = *pos;
                        *pos += n;
                        return Ok(Step::Data(start, n));
                    }
                    ChunkState::DataEnd => {
                        if rest.len() < 2 {
                            return Ok(Step::NeedMore);
                        }
                        if &rest[..2] != b"\r\n" {
                            return Err(H1Error::Invalid("chunk not followed by CRLF".into()));
                        }
                        *pos += 2;
                        *state = ChunkState::Size;
                    }
                    ChunkState::Trailers => {
                        // Trailers are not passed on.
                        let Some(end) = find_crlf(rest) else {
                            if rest.len() > MAX_HEAD {
                                return Err(H1Error::Invalid("trailers too long".into()));
                            }
                            return Ok(Step::NeedMore);
                        };
                        *pos += end + 2;
                        if end == 0 {
                            *self = Framing::Done;
                            return Ok(Step::End);
                        }
                    }
                },
            }
        }
    }

    /// If the body ends in `buf` before any more data: how far the end
    /// reaches. Stops at the first data, so it never walks a long buffer.
    pub fn end_follows(&self, buf: &[u8]) -> Option<usize> {
        let mut f = *self;
        let mut pos = 0;
        match f.decode_at(buf, &mut pos) {
            Ok(Step::End) => Some(pos),
            _ => None,
        }
    }

    /// If the whole rest of the body is in `buf`: where its pieces are and
    /// how far it reaches. Changes nothing.
    pub fn scan_to_end(&self, buf: &[u8]) -> Option<(Pieces, usize)> {
        let mut f = *self;
        let mut pos = 0;
        let mut pieces = Pieces::default();
        loop {
            match f.decode_at(buf, &mut pos) {
                Ok(Step::Data(start, len)) => pieces.push(start, len),
                Ok(Step::End) => return Some((pieces, pos)),
                Ok(Step::NeedMore) | Err(_) => return None,
            }
        }
    }
}

/// Where a body's pieces lie in a buffer (the first kept inline: most
/// bodies that arrive whole are one chunk).
#[derive(Default)]
pub(super) struct Pieces {
    pub first: Option<(usize, usize)>,
    pub more: Vec<(usize, usize)>,
}

impl Pieces {
    fn push(&mut self, start: usize, len: usize) {
        if self.first.is_none() {
            self.first = Some((start, len));
        } else {
            self.more.push((start, len));
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = &(usize, usize)> {
        self.first.iter().chain(self.more.iter())
    }
}

fn find_crlf(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n")
}
