//! Reading ahead on a second thread: while verification hashes one block, the next ones are
//! already being read. Copying a large archive out of the page cache costs about a quarter of
//! what hashing it does; done beside the hashing it costs no wall time.
//!
//! Memory stays bounded: a fixed set of blocks circulates between the two threads.

use std::io::{BufRead, Read};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

/// Bytes per block.
const BLOCK: usize = 1024 * 1024;
/// Blocks in flight (filled or being filled) besides the one being consumed.
const DEPTH: usize = 4;

/// A block and how much of it holds data; an empty block marks the end.
type Filled = std::io::Result<(Vec<u8>, usize)>;

/// The consuming side: a [`BufRead`] over the blocks the reading thread sends.
struct Blocks {
    filled: Receiver<Filled>,
    free: SyncSender<Vec<u8>>,
    current: Vec<u8>,
    len: usize,
    at: usize,
    done: bool,
}

/// `Read::read` for a reader whose buffer is its [`BufRead`] side: copies what is buffered.
pub(crate) fn read_buffered<B: BufRead + ?Sized>(
    reader: &mut B,
    buf: &mut [u8],
) -> std::io::Result<usize> {
    let available = reader.fill_buf()?;
    let n = available.len().min(buf.len());
    buf[..n].copy_from_slice(&available[..n]);
    reader.consume(n);
    Ok(n)
}

impl Read for Blocks {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        read_buffered(self, buf)
    }
}

impl BufRead for Blocks {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        if self.at == self.len && !self.done {
            // Hand the spent block back (the reader may have gone after an error: then
            // nothing needs it) and wait for the next.
            let spent = std::mem::take(&mut self.current);
            if spent.capacity() > 0 {
                let _ = self.free.send(spent);
            }
            match self.filled.recv() {
                Ok(Ok((block, len))) => {
                    self.current = block;
                    self.len = len;
                    self.at = 0;
                    self.done = len == 0;
                }
                Ok(Err(e)) => {
                    self.done = true;
                    return Err(e);
                }
                Err(_) => {
                    self.done = true;
                    return Err(std::io::Error::other("the read-ahead thread stopped"));
                }
            }
        }
        Ok(&self.current[self.at..self.len])
    }

    fn consume(&mut self, amt: usize) {
        self.at = (self.at + amt).min(self.len);
    }
}

/// The reading side: fills free blocks in order until the end, an error, or until the
/// consumer is gone.
fn fill<R: Read>(reader: &mut R, filled: &SyncSender<Filled>, free: &Receiver<Vec<u8>>) {
    while let Ok(mut block) = free.recv() {
        let mut len = 0;
        let result = loop {
            match reader.read(&mut block[len..]) {
                Ok(0) => break Ok(()),
                Ok(n) => {
                    len += n;
                    if len == block.len() {
                        break Ok(());
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        let end = result.is_err() || len == 0;
        let message = result.map(|()| (block, len));
        if filled.send(message).is_err() || end {
            return;
        }
    }
}

/// Runs `consume` over everything `reader` yields from its current position, read ahead by a
/// second thread. The thread ends when the reader is exhausted or `consume` returns, so
/// `reader` can be used again afterwards (from wherever the thread left it).
pub fn with_read_ahead<R: Read + Send, T>(
    reader: &mut R,
    consume: impl FnOnce(&mut dyn BufRead) -> T,
) -> T {
    std::thread::scope(|scope| {
        let (filled_tx, filled_rx) = sync_channel(DEPTH);
        let (free_tx, free_rx) = sync_channel(DEPTH + 1);
        for _ in 0..DEPTH {
            // Cannot fail: the channel has room and its receiver is right here.
            let _ = free_tx.send(vec![0u8; BLOCK]);
        }
        scope.spawn(move || fill(reader, &filled_tx, &free_rx));
        let mut blocks = Blocks {
            filled: filled_rx,
            free: free_tx,
            current: Vec::new(),
            len: 0,
            at: 0,
            done: false,
        };
        // Dropping `blocks` closes both channels, which ends the thread wherever it waits.
        consume(&mut blocks)
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::io::Cursor;

    #[test]
    fn yields_every_byte_in_order() {
        let data: Vec<u8> = (0..(BLOCK * 3 + 17)).map(|i| (i % 251) as u8).collect();
        let mut reader = Cursor::new(&data);
        let mut out = Vec::new();
        with_read_ahead(&mut reader, |r| r.read_to_end(&mut out)).unwrap();
        assert_eq!(out, data);
    }

    #[test]
    fn a_consumer_that_stops_early_ends_the_thread() {
        let data = vec![7u8; BLOCK * (DEPTH + 3)];
        let mut reader = Cursor::new(&data);
        let mut first = [0u8; 10];
        with_read_ahead(&mut reader, |r| r.read_exact(&mut first)).unwrap();
        assert_eq!(first, [7u8; 10]);
        // The thread read ahead at most what the circulating blocks hold, then stopped.
        let position = usize::try_from(reader.position()).unwrap();
        assert!(position <= BLOCK * (DEPTH + 1), "{position}");
    }

    #[test]
    fn read_errors_reach_the_consumer() {
        struct Failing;
        impl Read for Failing {
            fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
                Err(std::io::Error::other("disk on fire"))
            }
        }
        let err = with_read_ahead(&mut Failing, |r| r.fill_buf().map(<[u8]>::len)).unwrap_err();
        assert_eq!(err.to_string(), "disk on fire");
    }

    #[test]
    fn an_empty_reader_is_an_immediate_end() {
        let mut reader = Cursor::new(Vec::new());
        let mut out = Vec::new();
        assert_eq!(
            with_read_ahead(&mut reader, |r| r.read_to_end(&mut out)).unwrap(),
            0
        );
    }
}
