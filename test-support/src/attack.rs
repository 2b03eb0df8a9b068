//! Hostile HTTP/2 clients, for tests that attack a service the way an
//! adversary would, and what such a test measures.
//!
//! - [`RawConnection`]: a TCP connection that sends exactly the bytes it is
//!   given and reads the server's frames, answering nothing (no SETTINGS
//!   ACK, no PING ACK): silent TCP, a partial preface, a stalled handshake or
//!   message, a client that vanishes.
//! - [`frames`]: the frames such a client sends, hand-encoded (HPACK
//!   literals, no Huffman), including ones a well-behaved client never would.
//! - [`stream_flood`]: opens more streams on one connection than the server
//!   allows, without ever finishing one, and tallies how the server answers.
//! - [`H2Client`]: a well-behaved HTTP/2 client (the `h2` crate) for
//!   requests tonic's client cannot make (a non-gRPC content-type, a call
//!   without a deadline whose message never completes), and for reading the
//!   answer.
//! - [`rss_bytes`]: a process's resident memory, from `/proc/<pid>/status`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use frames::PREFACE;

/// Frame types (RFC 9113, section 6).
pub mod kind {
    /// DATA.
    pub const DATA: u8 = 0x0;
    /// HEADERS.
    pub const HEADERS: u8 = 0x1;
    /// RST_STREAM.
    pub const RST_STREAM: u8 = 0x3;
    /// SETTINGS.
    pub const SETTINGS: u8 = 0x4;
    /// PING.
    pub const PING: u8 = 0x6;
    /// GOAWAY.
    pub const GOAWAY: u8 = 0x7;
}

/// Error codes (RFC 9113, section 7) the tests look for.
pub mod reason {
    /// REFUSED_STREAM: the stream was not processed.
    pub const REFUSED_STREAM: u32 = 0x7;
    /// ENHANCE_YOUR_CALM: the peer is misbehaving.
    pub const ENHANCE_YOUR_CALM: u32 = 0xb;
}

/// Hand-encoded HTTP/2 frames.
pub mod frames {
    use super::kind;

    /// The client connection preface (RFC 9113, section 3.4).
    pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    /// END_STREAM, on DATA and HEADERS.
    const END_STREAM: u8 = 0x1;
    /// END_HEADERS, on HEADERS.
    const END_HEADERS: u8 = 0x4;
    /// ACK, on SETTINGS and PING.
    const ACK: u8 = 0x1;

    /// A frame: the 9-byte header, then `payload`.
    pub fn frame(kind: u8, flags: u8, stream_id: u32, payload: &[u8]) -> Vec<u8> {
        let length = u32::try_from(payload.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes();
        let mut frame = Vec::with_capacity(9 + payload.len());
        frame.extend_from_slice(&length[1..]);
        frame.push(kind);
        frame.push(flags);
        frame.extend_from_slice(&(stream_id & 0x7fff_ffff).to_be_bytes());
        frame.extend_from_slice(payload);
        frame
    }

    /// An empty SETTINGS frame: the client accepts every default.
    pub fn settings() -> Vec<u8> {
        frame(kind::SETTINGS, 0, 0, &[])
    }

    /// The acknowledgement of the server's SETTINGS.
    pub fn settings_ack() -> Vec<u8> {
        frame(kind::SETTINGS, ACK, 0, &[])
    }

    /// The preface and an empty SETTINGS frame: a complete client handshake.
    pub fn handshake() -> Vec<u8> {
        [PREFACE, &settings()].concat()
    }

    /// A gRPC request's HEADERS on `stream_id`: POST to `path` with
    /// `content_type`, plus `extra` headers (lower-case names), ending the
    /// stream only if `end_stream`.
    pub fn request_headers(
        stream_id: u32,
        path: &str,
        content_type: &str,
        extra: &[(&str, &str)],
        end_stream: bool,
    ) -> Vec<u8> {
        // Static table entries (RFC 7541, appendix A): 3 is `:method: POST`,
        // 6 `:scheme: http`; 1 names `:authority`, 4 `:path` and 31
        // `content-type`.
        let mut block = vec![0x80 | 3, 0x80 | 6];
        literal_with_indexed_name(&mut block, 1, "localhost");
        literal_with_indexed_name(&mut block, 4, path);
        literal_with_indexed_name(&mut block, 31, content_type);
        literal(&mut block, "te", "trailers");
        for (name, value) in extra {
            literal(&mut block, name, value);
        }
        let flags = END_HEADERS | if end_stream { END_STREAM } else { 0 };
        frame(kind::HEADERS, flags, stream_id, &block)
    }

    /// A DATA frame on `stream_id`.
    pub fn data(stream_id: u32, payload: &[u8], end_stream: bool) -> Vec<u8> {
        frame(
            kind::DATA,
            if end_stream { END_STREAM } else { 0 },
            stream_id,
            payload,
        )
    }

    /// A gRPC message prefix (uncompressed) that promises `length` bytes.
    pub fn grpc_prefix(length: u32) -> [u8; 5] {
        let [a, b, c, d] = length.to_be_bytes();
        [0, a, b, c, d]
    }

    /// "Literal Header Field without Indexing — Indexed Name".
    fn literal_with_indexed_name(block: &mut Vec<u8>, index: u32, value: &str) {
        integer(block, 4, 0x00, index);
        string(block, value);
    }

    /// "Literal Header Field without Indexing — New Name".
    fn literal(block: &mut Vec<u8>, name: &str, value: &str) {
        block.push(0x00);
        string(block, name);
        string(block, value);
    }

    /// A string literal, not Huffman-coded.
    fn string(block: &mut Vec<u8>, value: &str) {
        integer(
            block,
            7,
            0x00,
            u32::try_from(value.len()).unwrap_or(u32::MAX),
        );
        block.extend_from_slice(value.as_bytes());
    }

    /// An HPACK integer with an `prefix_bits`-bit prefix (RFC 7541, 5.1),
    /// the first byte's other bits being `first`.
    fn integer(block: &mut Vec<u8>, prefix_bits: u32, first: u8, value: u32) {
        let max = (1u32 << prefix_bits) - 1;
        if value < max {
            block.push(first | value as u8);
            return;
        }
        block.push(first | max as u8);
        let mut rest = value - max;
        while rest >= 128 {
            block.push((rest % 128) as u8 | 0x80);
            rest /= 128;
        }
        block.push(rest as u8);
    }
}

/// A frame the server sent.
#[derive(Debug, Clone)]
pub struct Frame {
    /// Its type, one of [`kind`].
    pub kind: u8,
    /// Its flags.
    pub flags: u8,
    /// Its stream id.
    pub stream_id: u32,
    /// Its payload.
    pub payload: Vec<u8>,
}

impl Frame {
    /// The error code of a RST_STREAM or GOAWAY frame.
    pub fn error_code(&self) -> Option<u32> {
        let at = match self.kind {
            kind::RST_STREAM => 0,
            kind::GOAWAY => 4,
            _ => return None,
        };
        let bytes = self.payload.get(at..at + 4)?;
        Some(u32::from_be_bytes(bytes.try_into().ok()?))
    }

    /// The value of `setting` in a SETTINGS frame that carries it.
    pub fn setting(&self, setting: u16) -> Option<u32> {
        if self.kind != kind::SETTINGS {
            return None;
        }
        self.payload.chunks_exact(6).find_map(|entry| {
            let (id, value) = entry.split_at(2);
            if u16::from_be_bytes(id.try_into().ok()?) != setting {
                return None;
            }
            Some(u32::from_be_bytes(value.try_into().ok()?))
        })
    }
}

/// SETTINGS_MAX_CONCURRENT_STREAMS.
pub const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;

/// Reads one frame; `None` once the server closed the connection (an
/// orderly close or a reset).
async fn read_frame(reader: &mut OwnedReadHalf) -> anyhow::Result<Option<Frame>> {
    let mut header = [0u8; 9];
    match reader.read_exact(&mut header).await {
        Ok(_) => {}
        Err(err) if closed(&err) => return Ok(None),
        Err(err) => return Err(err).context("reading a frame header"),
    }
    let [l1, l2, l3, kind, flags, s1, s2, s3, s4] = header;
    let length = u32::from_be_bytes([0, l1, l2, l3]);
    let mut payload = vec![0; usize::try_from(length)?];
    match reader.read_exact(&mut payload).await {
        Ok(_) => {}
        Err(err) if closed(&err) => return Ok(None),
        Err(err) => return Err(err).context("reading a frame payload"),
    }
    Ok(Some(Frame {
        kind,
        flags,
        stream_id: u32::from_be_bytes([s1, s2, s3, s4]) & 0x7fff_ffff,
        payload,
    }))
}

/// Whether `err` says the peer closed or reset the connection.
fn closed(err: &std::io::Error) -> bool {
    use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset, UnexpectedEof};
    matches!(
        err.kind(),
        UnexpectedEof | ConnectionReset | ConnectionAborted | BrokenPipe
    )
}

/// A connection that sends exactly what it is told and answers nothing.
pub struct RawConnection {
    reader: OwnedReadHalf,
    writer: OwnedWriteHalf,
    opened: Instant,
}

/// How a [`RawConnection`] ended.
#[derive(Debug)]
pub struct Closed {
    /// From connecting until the server closed the connection.
    pub after: Duration,
    /// The frames the server sent until then.
    pub frames: Vec<Frame>,
}

impl Closed {
    /// How many frames of `kind` the server sent.
    pub fn count(&self, kind: u8) -> usize {
        self.frames
            .iter()
            .filter(|frame| frame.kind == kind)
            .count()
    }
}

impl RawConnection {
    /// Connects and sends nothing.
    pub async fn connect(address: SocketAddr) -> anyhow::Result<Self> {
        let stream = TcpStream::connect(address)
            .await
            .with_context(|| format!("connecting to {address}"))?;
        stream.set_nodelay(true)?;
        let (reader, writer) = stream.into_split();
        Ok(Self {
            reader,
            writer,
            opened: Instant::now(),
        })
    }

    /// Sends `bytes`.
    pub async fn send(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        self.writer.write_all(bytes).await.context("sending")
    }

    /// The next frame from the server, `None` once it closed the connection.
    pub async fn next_frame(&mut self) -> anyhow::Result<Option<Frame>> {
        read_frame(&mut self.reader).await
    }

    /// Sends a PING and reads until the server acknowledges it: the server
    /// has then read everything sent before, and started the calls it opened.
    pub async fn sync(&mut self, within: Duration) -> anyhow::Result<()> {
        self.send(&frames::frame(kind::PING, 0, 0, &[0; 8])).await?;
        tokio::time::timeout(within, async {
            loop {
                match read_frame(&mut self.reader).await? {
                    Some(frame) if frame.kind == kind::PING && frame.flags & 0x1 != 0 => {
                        return Ok(());
                    }
                    Some(_) => {}
                    None => bail!("the server closed the connection before answering the PING"),
                }
            }
        })
        .await
        .with_context(|| format!("no PING acknowledgement within {within:?}"))?
    }

    /// Reads (and answers nothing) until the server closes the connection,
    /// failing if it is still open after `within`.
    pub async fn wait_closed(mut self, within: Duration) -> anyhow::Result<Closed> {
        let mut frames = Vec::new();
        let until = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(until, read_frame(&mut self.reader)).await {
                Ok(Ok(Some(frame))) => frames.push(frame),
                Ok(Ok(None)) => {
                    return Ok(Closed {
                        after: self.opened.elapsed(),
                        frames,
                    });
                }
                Ok(Err(err)) => return Err(err),
                Err(_) => bail!(
                    "the connection was still open after {within:?}; the server sent {} frames",
                    frames.len()
                ),
            }
        }
    }
}

/// What the server answered to a [`stream_flood`], so far.
#[derive(Debug, Default, Clone)]
pub struct FloodTally {
    /// HEADERS frames written before the server closed the connection.
    pub streams_sent: u32,
    /// The server's SETTINGS_MAX_CONCURRENT_STREAMS, if it sent one.
    pub max_concurrent_streams: Option<u32>,
    /// Acknowledgements of the client's PING.
    pub ping_acks: u32,
    /// RST_STREAM(REFUSED_STREAM) frames.
    pub refused: u32,
    /// RST_STREAM frames with any other code.
    pub other_resets: u32,
    /// The error code of the server's GOAWAY, if it sent one.
    pub goaway: Option<u32>,
    /// Whether the server has closed the connection.
    pub closed: bool,
}

impl FloodTally {
    /// Counts one frame from the server.
    fn count(&mut self, frame: &Frame) {
        match frame.kind {
            kind::SETTINGS => {
                if let Some(max) = frame.setting(SETTINGS_MAX_CONCURRENT_STREAMS) {
                    self.max_concurrent_streams = Some(max);
                }
            }
            kind::PING if frame.flags & 0x1 != 0 => self.ping_acks += 1,
            kind::RST_STREAM if frame.error_code() == Some(reason::REFUSED_STREAM) => {
                self.refused += 1;
            }
            kind::RST_STREAM => self.other_resets += 1,
            kind::GOAWAY => self.goaway = frame.error_code(),
            _ => {}
        }
    }
}

/// A connection on which [`stream_flood`] opened its streams; dropping it
/// (or [`StreamFlood::leave`]) closes the connection.
pub struct StreamFlood {
    /// Kept up to date by the task reading the server's frames.
    tally: watch::Receiver<FloodTally>,
    /// HEADERS frames written.
    sent: u32,
    reader: JoinHandle<()>,
    /// Kept so the connection stays open until the client leaves.
    writer: OwnedWriteHalf,
}

impl StreamFlood {
    /// What the server has answered so far.
    pub fn tally(&self) -> FloodTally {
        FloodTally {
            streams_sent: self.sent,
            ..self.tally.borrow().clone()
        }
    }

    /// Closes the connection, as a client that leaves.
    pub async fn leave(mut self) {
        let _ = self.writer.shutdown().await;
        drop(self);
    }
}

impl Drop for StreamFlood {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// Opens `streams` request streams to `path` on one connection, none of
/// them ever finished (HEADERS without END_STREAM).
///
/// The first `held` streams are opened, then a PING: once the server has
/// acknowledged it, it has read them, and they are calls in progress.
/// The rest follow as fast as the socket takes them, ignoring
/// SETTINGS_MAX_CONCURRENT_STREAMS. Returns once every HEADERS frame is
/// written or the server closed the connection; the server's answers are
/// tallied meanwhile, and after.
pub async fn stream_flood(
    address: SocketAddr,
    path: &str,
    held: u32,
    streams: u32,
) -> anyhow::Result<StreamFlood> {
    const FRAMES_PER_WRITE: u32 = 1000;
    const PING_ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
    let RawConnection {
        mut reader,
        mut writer,
        ..
    } = RawConnection::connect(address).await?;
    let (tally_tx, mut tally) = watch::channel(FloodTally::default());
    let reading = tokio::spawn(async move {
        loop {
            match read_frame(&mut reader).await {
                Ok(Some(frame)) => tally_tx.send_modify(|tally| tally.count(&frame)),
                Ok(None) | Err(_) => {
                    tally_tx.send_modify(|tally| tally.closed = true);
                    return;
                }
            }
        }
    });
    let headers = |stream: u32| {
        // Client streams are odd: 1, 3, 5, …
        frames::request_headers(2 * stream + 1, path, "application/grpc", &[], false)
    };
    let mut batch = frames::handshake();
    for stream in 0..held.min(streams) {
        batch.extend(headers(stream));
    }
    batch.extend(frames::frame(kind::PING, 0, 0, &[0; 8]));
    writer
        .write_all(&batch)
        .await
        .context("opening the held streams")?;
    let mut sent = held.min(streams);
    tokio::time::timeout(
        PING_ANSWER_TIMEOUT,
        tally.wait_for(|tally| tally.ping_acks > 0 || tally.closed),
    )
    .await
    .context("the server did not answer the PING")??;
    while sent < streams {
        let in_batch = FRAMES_PER_WRITE.min(streams - sent);
        batch.clear();
        for stream in sent..sent + in_batch {
            batch.extend(headers(stream));
        }
        if writer.write_all(&batch).await.is_err() {
            // The server closed the connection: the flood is over.
            break;
        }
        sent += in_batch;
    }
    Ok(StreamFlood {
        tally,
        sent,
        reader: reading,
        writer,
    })
}

/// What a server answered to an [`H2Client`] request.
#[derive(Debug)]
pub struct H2Response {
    /// The HTTP status.
    pub status: http::StatusCode,
    /// The response headers (for a trailers-only gRPC answer, its status).
    pub headers: http::HeaderMap,
    /// From sending the request until the headers arrived.
    pub after: Duration,
}

impl H2Response {
    /// The `grpc-status` header, if any.
    pub fn grpc_status(&self) -> Option<&str> {
        self.headers.get("grpc-status")?.to_str().ok()
    }
}

/// A well-behaved HTTP/2 client: it acknowledges settings and pings, and
/// respects the server's stream limit.
pub struct H2Client {
    sender: h2::client::SendRequest<Bytes>,
    connection: JoinHandle<()>,
    address: SocketAddr,
}

impl H2Client {
    /// Connects and completes the HTTP/2 handshake.
    pub async fn connect(address: SocketAddr) -> anyhow::Result<Self> {
        let tcp = TcpStream::connect(address)
            .await
            .with_context(|| format!("connecting to {address}"))?;
        let (sender, connection) = h2::client::handshake(tcp)
            .await
            .context("HTTP/2 handshake")?;
        let connection = tokio::spawn(async move {
            // Its end is the test's business (seen as a failed request).
            let _ = connection.await;
        });
        Ok(Self {
            sender,
            connection,
            address,
        })
    }

    /// POSTs `body` to `path` with `content_type` and `headers`, ending the
    /// request only if `end_stream`, and waits for the response headers.
    pub async fn request(
        &mut self,
        path: &str,
        content_type: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        end_stream: bool,
    ) -> anyhow::Result<H2Response> {
        let mut request = http::Request::builder()
            .method("POST")
            .uri(format!("http://{}{path}", self.address))
            .header("content-type", content_type)
            .header("te", "trailers");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(()).context("building the request")?;
        let mut sender = self.sender.clone().ready().await.context("no stream")?;
        let started = Instant::now();
        let (response, mut send) = sender
            .send_request(request, body.is_empty() && end_stream)
            .context("sending the request headers")?;
        // The server may answer (and close the stream) before the body is
        // sent, as it does a request it refuses from its headers alone; its
        // answer is what counts then.
        let sent = if body.is_empty() {
            Ok(())
        } else {
            send.send_data(Bytes::copy_from_slice(body), end_stream)
        };
        // `send` lives until the answer arrives: dropping it would reset
        // the stream.
        let response = response.await.with_context(|| match &sent {
            Ok(()) => "awaiting the response".to_owned(),
            Err(err) => format!("awaiting the response (sending the body failed: {err})"),
        })?;
        drop(send);
        Ok(H2Response {
            status: response.status(),
            headers: response.headers().clone(),
            after: started.elapsed(),
        })
    }
}

impl Drop for H2Client {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

/// The resident set size of process `pid` (VmRSS in `/proc/<pid>/status`).
pub fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let line = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .ok_or_else(|| anyhow!("no VmRSS in /proc/{pid}/status"))?;
    let kib: u64 = line
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .with_context(|| format!("VmRSS {line:?}"))?;
    Ok(kib * 1024)
}

/// The soft and hard open-files limits of process `pid`, from
/// `/proc/<pid>/limits`.
pub fn open_files_limit(pid: u32) -> anyhow::Result<(u64, u64)> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits"))
        .with_context(|| format!("reading /proc/{pid}/limits"))?;
    let line = limits
        .lines()
        .find_map(|line| line.strip_prefix("Max open files"))
        .ok_or_else(|| anyhow!("no open files limit in /proc/{pid}/limits"))?;
    let mut values = line.split_whitespace().map(str::parse::<u64>);
    match (values.next(), values.next()) {
        (Some(Ok(soft)), Some(Ok(hard))) => Ok((soft, hard)),
        _ => bail!("unreadable open files limit {line:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hpack_integers_use_their_prefix_then_continuation_bytes() {
        let headers = frames::request_headers(1, "/a", "application/grpc", &[], false);
        // Header: length 3 bytes, type HEADERS, flags END_HEADERS, stream 1.
        assert_eq!(&headers[3..9], &[kind::HEADERS, 0x4, 0, 0, 0, 1]);
        // content-type is static entry 31: 0x0f then 31 - 15 = 16.
        let block = &headers[9..];
        let at = block
            .windows(2)
            .position(|pair| pair == [0x0f, 0x10])
            .unwrap();
        assert_eq!(block[at + 2] as usize, "application/grpc".len());
    }

    #[test]
    fn a_frames_error_code_and_settings_are_read_from_its_payload() {
        let reset = Frame {
            kind: kind::RST_STREAM,
            flags: 0,
            stream_id: 3,
            payload: reason::REFUSED_STREAM.to_be_bytes().to_vec(),
        };
        assert_eq!(reset.error_code(), Some(reason::REFUSED_STREAM));
        let settings = Frame {
            kind: kind::SETTINGS,
            flags: 0,
            stream_id: 0,
            payload: vec![0, 3, 0, 0, 0, 100, 0, 4, 0, 1, 0, 0],
        };
        assert_eq!(settings.setting(SETTINGS_MAX_CONCURRENT_STREAMS), Some(100));
        assert_eq!(settings.setting(9), None);
    }
}
