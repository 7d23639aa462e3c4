//! A tar archive that a Dockerfile's `ADD` unpacks: a file of the build context, so as
//! untrusted as an image layer, and unpacked by the same confined extraction (no entry written
//! outside the destination, through `..`, an absolute name, a hard link or a symlink the
//! archive planted), bounded in what it may unpack to. Plain tars and tars compressed with
//! gzip, bzip2, xz or zstd are recognised, as Docker recognises them; anything else is not an
//! archive and is copied as the file it is.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::os::fd::OwnedFd;
use std::path::Path;

use crate::Owner;
use crate::codec::Decoder;
use crate::error::ImageError;
use crate::extract::Extraction;

/// What unpacking an archive wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ArchiveUnpacked {
    pub files: u64,
    pub directories: u64,
    pub symlinks: u64,
    pub hard_links: u64,
    /// Bytes of regular file content written.
    pub file_bytes: u64,
    /// Device nodes, FIFOs and sockets, which are not unpacked.
    pub skipped: u64,
}

/// The most memory the xz decoder may use (its dictionary), in KiB.
const XZ_MEMORY_KB: u32 = 256 * 1024;

/// Unpacks `source` into `dest` (an existing directory) when it is a tar archive, plain or
/// compressed; `Ok(None)`, with nothing written, when it is not one. Entries keep the
/// archive's owners as `owner` maps image ids (as a layer's do); whiteouts (`.wh.` names),
/// which only an image layer may hold, are refused. `label` names the archive in errors; more
/// than `max_bytes` of unpacked tar is an error. On an error `dest` may hold a partial tree
/// the caller removes.
pub fn unpack_archive(
    source: File,
    dest: &Path,
    owner: Owner,
    label: &str,
    max_bytes: u64,
) -> Result<Option<ArchiveUnpacked>, ImageError> {
    let corrupt = |e: io::Error| ImageError::CorruptLayer {
        digest: label.to_string(),
        detail: e.to_string(),
    };
    let mut compressed = BufReader::with_capacity(64 * 1024, source);
    let head = compressed.fill_buf().map_err(corrupt)?;
    let decoded: Box<dyn Read> = if head.starts_with(b"BZh") {
        Box::new(bzip2::read::MultiBzDecoder::new(compressed))
    } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        Box::new(lzma_rust2::XzReader::new_mem_limit(
            compressed,
            true,
            XZ_MEMORY_KB,
        ))
    } else {
        // gzip, zstd or nothing, as a layer's blob.
        Box::new(Decoder::new(compressed).map_err(corrupt)?)
    };
    let mut decoded = Bounded {
        inner: decoded,
        left: max_bytes,
        label,
    };
    // A stream that does not begin with a tar header is not an archive (a compressed file of
    // something else is not either, nor one that does not decompress): Docker copies such a
    // file as it is.
    let mut head = Vec::with_capacity(512);
    match (&mut decoded).take(512).read_to_end(&mut head) {
        Ok(_) if is_tar_header(&head) => {}
        Ok(_) | Err(_) => return Ok(None),
    }
    let tar_stream = BufReader::with_capacity(64 * 1024, io::Cursor::new(head).chain(decoded));
    let root: OwnedFd = File::open(dest)
        .map_err(ImageError::io("open the archive's destination", dest))?
        .into();
    let mut extraction = Extraction::new(root, owner, label, dest).refusing_whiteouts();
    let mut archive = tar::Archive::new(tar_stream);
    extraction.extract(&mut archive)?;
    let unpacked = extraction.finish()?;
    Ok(Some(ArchiveUnpacked {
        files: unpacked.files,
        directories: unpacked.directories,
        symlinks: unpacked.symlinks,
        hard_links: unpacked.hard_links,
        file_bytes: unpacked.file_bytes,
        skipped: unpacked.skipped,
    }))
}

/// Whether `block` is a tar header: its checksum (the sum of its bytes, the checksum field
/// counted as spaces) is the one it records.
fn is_tar_header(block: &[u8]) -> bool {
    if block.len() < 512 || block.iter().all(|b| *b == 0) {
        return false;
    }
    let field = &block[148..156];
    let text: String = field
        .iter()
        .take_while(|b| **b != 0 && **b != b' ')
        .map(|b| *b as char)
        .collect();
    let text = text.trim_start();
    let Ok(recorded) = u32::from_str_radix(text, 8) else {
        return false;
    };
    let sum: u32 = block[..512]
        .iter()
        .enumerate()
        .map(|(i, b)| {
            if (148..156).contains(&i) {
                32
            } else {
                u32::from(*b)
            }
        })
        .sum();
    sum == recorded
}

/// A reader that fails once more than `left` bytes came through it.
struct Bounded<'a, R> {
    inner: R,
    left: u64,
    label: &'a str,
}

impl<R: Read> Read for Bounded<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let read = self.inner.read(buf)?;
        self.left = self.left.checked_sub(read as u64).ok_or_else(|| {
            io::Error::other(format!("{} unpacks to more than allowed", self.label))
        })?;
        Ok(read)
    }
}
