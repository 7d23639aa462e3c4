//! Reading a layer blob: hashing what passes, and undoing its compression.
//!
//! A layer is checked twice as it streams: the compressed bytes against the digest the
//! manifest names, the uncompressed tar against the diff id the configuration names. Both
//! checks see every byte, including what follows the tar's end marker, so a blob with
//! anything appended or changed is refused. Compression is recognised by its magic bytes, not
//! the media type, because archives and layouts label layers inconsistently.

use std::io::{self, BufRead, BufReader, Read};

use ruzstd::decoding::errors::{FrameDecoderError, ReadFrameHeaderError};
use ruzstd::decoding::{BlockDecodingStrategy, FrameDecoder};
use sha2::{Digest as _, Sha256};

/// The digest of `bytes` as `sha256:<hex>`.
pub(crate) fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// A reader that hashes and counts what it passes on, and reports progress.
pub(crate) struct HashingReader<'p, R> {
    inner: R,
    hasher: Sha256,
    count: u64,
    reported: u64,
    progress: Option<&'p mut dyn FnMut(u64)>,
}

/// Progress is reported at most once per this many bytes.
const PROGRESS_STEP: u64 = 1 << 20;

impl<'p, R: Read> HashingReader<'p, R> {
    pub(crate) fn new(inner: R, progress: Option<&'p mut dyn FnMut(u64)>) -> Self {
        HashingReader {
            inner,
            hasher: Sha256::new(),
            count: 0,
            reported: 0,
            progress,
        }
    }

    /// Reads and hashes whatever is left of the stream.
    pub(crate) fn drain(&mut self) -> io::Result<()> {
        io::copy(self, &mut io::sink())?;
        if let Some(progress) = self.progress.as_mut() {
            progress(self.count);
        }
        Ok(())
    }

    /// The digest of what has passed so far, as `sha256:<hex>`.
    pub(crate) fn digest(&self) -> String {
        format!("sha256:{}", hex::encode(self.hasher.clone().finalize()))
    }

    /// How many bytes have passed so far.
    pub(crate) fn count(&self) -> u64 {
        self.count
    }

    /// The wrapped reader.
    pub(crate) fn into_inner(self) -> R {
        self.inner
    }
}

impl<R: Read> Read for HashingReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        if let Some(progress) = self.progress.as_mut()
            && self.count - self.reported >= PROGRESS_STEP
        {
            self.reported = self.count;
            progress(self.count);
        }
        Ok(n)
    }
}

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Compression {
    None,
    Gzip,
    Zstd,
}

/// Recognises the compression from the first bytes of the blob.
pub(crate) fn sniff<R: BufRead>(reader: &mut R) -> io::Result<Compression> {
    let head = reader.fill_buf()?;
    Ok(if head.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Zstd
    } else {
        Compression::None
    })
}

/// The uncompressed stream of a layer, whatever its compression.
pub(crate) enum Decoder<R: BufRead> {
    Plain(R),
    Gzip(Box<flate2::bufread::MultiGzDecoder<R>>),
    Zstd(Box<ZstdFrames<R>>),
}

impl<R: BufRead> Decoder<R> {
    pub(crate) fn new(mut reader: R) -> io::Result<Decoder<R>> {
        Ok(match sniff(&mut reader)? {
            Compression::None => Decoder::Plain(reader),
            Compression::Gzip => {
                Decoder::Gzip(Box::new(flate2::bufread::MultiGzDecoder::new(reader)))
            }
            Compression::Zstd => Decoder::Zstd(Box::new(ZstdFrames::new(reader))),
        })
    }

    /// Gives back the compressed stream, positioned after what the decoder consumed.
    pub(crate) fn into_inner(self) -> R {
        match self {
            Decoder::Plain(r) => r,
            Decoder::Gzip(d) => (*d).into_inner(),
            Decoder::Zstd(d) => d.source,
        }
    }
}

impl<R: BufRead> Read for Decoder<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Decoder::Plain(r) => r.read(buf),
            Decoder::Gzip(d) => d.read(buf),
            Decoder::Zstd(d) => d.read(buf),
        }
    }
}

/// A zstd stream of any number of frames, skippable frames included (zstd:chunked layers
/// carry their table of contents in one).
pub(crate) struct ZstdFrames<R> {
    source: R,
    decoder: FrameDecoder,
    in_frame: bool,
}

impl<R: BufRead> ZstdFrames<R> {
    fn new(source: R) -> Self {
        ZstdFrames {
            source,
            decoder: FrameDecoder::new(),
            in_frame: false,
        }
    }
}

fn zstd_error(e: FrameDecoderError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("zstd: {e}"))
}

impl<R: BufRead> Read for ZstdFrames<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if !self.in_frame {
                if self.source.fill_buf()?.is_empty() {
                    return Ok(0);
                }
                match self.decoder.reset(&mut self.source) {
                    Ok(()) => self.in_frame = true,
                    Err(FrameDecoderError::ReadFrameHeaderError(
                        ReadFrameHeaderError::SkipFrame { length, .. },
                    )) => {
                        let skipped = io::copy(
                            &mut (&mut self.source).take(u64::from(length)),
                            &mut io::sink(),
                        )?;
                        if skipped != u64::from(length) {
                            return Err(io::Error::new(
                                io::ErrorKind::UnexpectedEof,
                                "zstd: truncated skippable frame",
                            ));
                        }
                        continue;
                    }
                    Err(e) => return Err(zstd_error(e)),
                }
            }
            while self.decoder.can_collect() == 0 && !self.decoder.is_finished() {
                self.decoder
                    .decode_blocks(&mut self.source, BlockDecodingStrategy::UptoBlocks(1))
                    .map_err(zstd_error)?;
            }
            let n = self.decoder.read(buf)?;
            if n > 0 || buf.is_empty() {
                return Ok(n);
            }
            if self.decoder.is_finished() {
                self.in_frame = false;
            }
        }
    }
}

/// A buffered reader large enough that the decoders read in big gulps.
pub(crate) fn buffered<R: Read>(inner: R) -> BufReader<R> {
    BufReader::with_capacity(256 * 1024, inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_gzip_and_multi_frame_zstd_decode_alike() {
        let data = b"hello layer ".repeat(1000);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        io::Write::write_all(&mut gz, &data).unwrap();
        let gz = gz.finish().unwrap();
        // Two zstd frames with a skippable frame between them.
        let half = data.len() / 2;
        let mut zst = ruzstd::encoding::compress_to_vec(
            &data[..half],
            ruzstd::encoding::CompressionLevel::Fastest,
        );
        zst.extend_from_slice(&0x184D2A50u32.to_le_bytes());
        zst.extend_from_slice(&3u32.to_le_bytes());
        zst.extend_from_slice(b"toc");
        zst.extend(ruzstd::encoding::compress_to_vec(
            &data[half..],
            ruzstd::encoding::CompressionLevel::Fastest,
        ));
        for blob in [data.clone(), gz, zst] {
            let mut out = Vec::new();
            Decoder::new(buffered(&blob[..]))
                .unwrap()
                .read_to_end(&mut out)
                .unwrap();
            assert_eq!(out, data);
        }
    }
}
