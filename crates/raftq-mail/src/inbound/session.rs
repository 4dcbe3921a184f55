//! One SMTP session (RFC 5321, with PIPELINING, SIZE, 8BITMIME, ENHANCEDSTATUSCODES and
//! STARTTLS): commands are parsed by `smtp-proto`; what they do is decided here. A mail is
//! answered 250 only once every queue it is for has stored it.

use std::sync::Arc;
use std::time::Duration;

use smtp_proto::request::receiver::{DataReceiver, DummyDataReceiver, RequestReceiver};
use smtp_proto::{EhloResponse, Error as ParseError, Request};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::Inbound;
use super::mapping::{Envelope, to_message};
use super::store::Queues;
use crate::address::parse_address;
use crate::reply::Reply;

/// Recipients one mail may have.
const MAX_RECIPIENTS: usize = 100;
/// Commands refused in a row before the session is closed.
const MAX_ERRORS: u32 = 20;
/// A session silent this long is closed (RFC 5321 asks for at least 5 minutes).
const IDLE: Duration = Duration::from_secs(300);
/// A client that does not read its replies for this long is dropped.
const WRITE: Duration = Duration::from_secs(60);
const READ_CHUNK: usize = 64 * 1024;

/// How a session's part over one stream ended.
pub enum End {
    Closed,
    /// The client asked for TLS and was told to go ahead.
    StartTls,
}

/// What one session remembers across commands.
#[derive(Default)]
pub struct State {
    greeted: bool,
    tls: bool,
    sender: Option<String>,
    /// (address, queue) per accepted recipient.
    recipients: Vec<(String, String)>,
    /// The smallest size limit among the recipients' queues.
    limit: u64,
    /// The size MAIL FROM declared (0: none).
    declared: u64,
    errors: u32,
}

impl State {
    /// A session's state once TLS started: nothing from before it is kept (RFC 3207).
    pub fn after_tls() -> State {
        State {
            tls: true,
            ..State::default()
        }
    }

    fn reset(&mut self) {
        self.sender = None;
        self.recipients.clear();
        self.limit = 0;
        self.declared = 0;
    }
}

enum Mode {
    Command(RequestReceiver),
    Data(DataReceiver, Vec<u8>),
    /// Reading past a mail that is too big, to refuse it at its end.
    Discard(DummyDataReceiver),
}

impl Inbound {
    /// Serves commands on `io` until the client quits, goes away, or starts TLS.
    pub async fn converse<S: AsyncRead + AsyncWrite + Unpin>(
        self: &Arc<Self>,
        io: &mut S,
        state: &mut State,
        peer: std::net::SocketAddr,
    ) -> std::io::Result<End> {
        let mut mode = Mode::Command(RequestReceiver::default());
        let mut chunk = vec![0u8; READ_CHUNK];
        let mut out = Vec::new();
        loop {
            let read = match tokio::time::timeout(IDLE, io.read(&mut chunk)).await {
                Ok(read) => read?,
                Err(_) => {
                    Reply::new(421, [4, 4, 2], "idle too long; closing").write(&mut out);
                    send(io, &out).await?;
                    return Ok(End::Closed);
                }
            };
            if read == 0 {
                return Ok(End::Closed);
            }
            let mut bytes = chunk[..read].iter();
            while bytes.len() > 0 {
                match &mut mode {
                    Mode::Command(receiver) => {
                        let request = match receiver.ingest(&mut bytes) {
                            Ok(request) => request.into_owned(),
                            Err(ParseError::NeedsMoreData { .. }) => break,
                            Err(error) => {
                                state.errors += 1;
                                syntax_reply(&error).write(&mut out);
                                if state.errors > MAX_ERRORS {
                                    Reply::new(421, [4, 7, 0], "too many errors; closing")
                                        .write(&mut out);
                                    send(io, &out).await?;
                                    return Ok(End::Closed);
                                }
                                continue;
                            }
                        };
                        match self.command(request, state, &mut out).await {
                            Next::Continue if state.errors > MAX_ERRORS => {
                                Reply::new(421, [4, 7, 0], "too many errors; closing")
                                    .write(&mut out);
                                send(io, &out).await?;
                                return Ok(End::Closed);
                            }
                            Next::Continue => {}
                            Next::Data => {
                                mode = Mode::Data(DataReceiver::new(), Vec::new());
                            }
                            Next::Quit => {
                                send(io, &out).await?;
                                return Ok(End::Closed);
                            }
                            Next::StartTls => {
                                send(io, &out).await?;
                                if bytes.len() > 0 {
                                    // Commands sent after STARTTLS in plaintext: a client
                                    // may not pipeline past it, and an attacker could.
                                    tracing::info!(%peer, "plaintext after STARTTLS; closing");
                                    return Ok(End::Closed);
                                }
                                return Ok(End::StartTls);
                            }
                        }
                    }
                    Mode::Data(receiver, mail) => {
                        let done = receiver.ingest(&mut bytes, mail);
                        if done && mail.len() as u64 > state.limit {
                            self.too_big(state, peer).write(&mut out);
                            state.reset();
                            mode = Mode::Command(RequestReceiver::default());
                        } else if done {
                            let mail = std::mem::take(mail);
                            let reply = self.deliver(&mail, state, peer).await;
                            if reply.is_positive() {
                                // A mail taken: the session is doing real work.
                                state.errors = 0;
                            }
                            reply.write(&mut out);
                            state.reset();
                            mode = Mode::Command(RequestReceiver::default());
                        } else if mail.len() as u64 > state.limit {
                            mode = Mode::Discard(DummyDataReceiver::new_data(receiver));
                        }
                    }
                    Mode::Discard(receiver) => {
                        if receiver.ingest(&mut bytes) {
                            self.too_big(state, peer).write(&mut out);
                            state.reset();
                            mode = Mode::Command(RequestReceiver::default());
                        }
                    }
                }
            }
            if !out.is_empty() {
                send(io, &out).await?;
                out.clear();
            }
        }
    }

    /// The refusal of a mail over the size limit.
    fn too_big(&self, state: &State, peer: std::net::SocketAddr) -> Reply {
        let reply = Reply::new(
            552,
            [5, 3, 4],
            format!("message exceeds the size limit of {} bytes", state.limit),
        );
        tracing::info!(%peer, %reply, "mail refused");
        metrics::counter!("raftq_mail_inbound_refused_total", "reason" => "size").increment(1);
        reply
    }

    async fn command(
        &self,
        request: Request<String>,
        state: &mut State,
        out: &mut Vec<u8>,
    ) -> Next {
        let reply = match request {
            Request::Ehlo { .. } => {
                state.greeted = true;
                state.reset();
                let mut ehlo = EhloResponse::new(self.hostname.as_str());
                ehlo.capabilities = smtp_proto::EXT_SIZE
                    | smtp_proto::EXT_PIPELINING
                    | smtp_proto::EXT_8BIT_MIME
                    | smtp_proto::EXT_ENHANCED_STATUS_CODES;
                if self.acceptor.is_some() && !state.tls {
                    ehlo.capabilities |= smtp_proto::EXT_START_TLS;
                }
                ehlo.size = self.config.max_message_bytes;
                let _ = ehlo.write(&mut *out);
                return Next::Continue;
            }
            Request::Helo { .. } => {
                state.greeted = true;
                state.reset();
                Reply::new(250, [2, 0, 0], self.hostname.clone())
            }
            Request::Lhlo { .. } => Reply::new(500, [5, 5, 1], "this is SMTP, not LMTP"),
            Request::StartTls => match (&self.acceptor, state.tls) {
                (Some(_), false) => {
                    Reply::new(220, [2, 0, 0], "ready to start TLS").write(out);
                    return Next::StartTls;
                }
                (Some(_), true) => Reply::new(503, [5, 5, 1], "TLS is already active"),
                (None, _) => Reply::new(502, [5, 5, 1], "STARTTLS is not offered here"),
            },
            Request::Mail { from } => self.mail(from, state),
            Request::Rcpt { to } => self.recipient(&to.address, state).await,
            Request::Data => {
                if state.sender.is_none() {
                    Reply::new(503, [5, 5, 1], "MAIL first")
                } else if state.recipients.is_empty() {
                    Reply::new(554, [5, 5, 1], "no valid recipients")
                } else {
                    out.extend_from_slice(b"354 Start mail input; end with <CRLF>.<CRLF>\r\n");
                    return Next::Data;
                }
            }
            Request::Rset => {
                state.reset();
                Reply::new(250, [2, 0, 0], "reset")
            }
            Request::Noop { .. } => Reply::new(250, [2, 0, 0], "ok"),
            Request::Quit => {
                Reply::new(221, [2, 0, 0], "bye").write(out);
                return Next::Quit;
            }
            Request::Vrfy { .. } => Reply::new(252, [2, 5, 0], "send some mail and see"),
            other => Reply::new(
                502,
                [5, 5, 1],
                format!("{} is not implemented", other.name()),
            ),
        };
        // Refusals count towards the session's limit until a mail is taken (RSET and NOOP
        // do not clear them).
        if !reply.is_positive() {
            state.errors += 1;
        }
        reply.write(out);
        Next::Continue
    }

    fn mail(&self, from: smtp_proto::MailFrom<String>, state: &mut State) -> Reply {
        if !state.greeted {
            return Reply::new(503, [5, 5, 1], "say EHLO first");
        }
        if self.config.require_tls && !state.tls {
            return Reply::new(530, [5, 7, 0], "must issue STARTTLS first");
        }
        if state.sender.is_some() {
            return Reply::new(503, [5, 5, 1], "a mail is already under way");
        }
        if from.size > self.config.max_message_bytes {
            return Reply::new(
                552,
                [5, 3, 4],
                format!(
                    "message size exceeds the limit of {} bytes",
                    self.config.max_message_bytes
                ),
            );
        }
        state.sender = Some(from.address);
        state.limit = self.config.max_message_bytes as u64;
        state.declared = from.size as u64;
        Reply::new(250, [2, 1, 0], "sender ok")
    }

    async fn recipient(&self, address: &str, state: &mut State) -> Reply {
        if state.sender.is_none() {
            return Reply::new(503, [5, 5, 1], "MAIL first");
        }
        if state.recipients.len() >= MAX_RECIPIENTS {
            return Reply::new(452, [4, 5, 3], "too many recipients");
        }
        let Some((local, domain)) = parse_address(address) else {
            return Reply::new(501, [5, 1, 3], "not a mail address");
        };
        if !domain.eq_ignore_ascii_case(&self.domain) {
            return Reply::new(
                550,
                [5, 7, 1],
                format!("relay not permitted: only {} is served here", self.domain),
            );
        }
        let queue = match Queues::name(&self.config, &local) {
            Ok(queue) => queue,
            Err(reply) => return self.refused(reply, "recipient"),
        };
        let limit = match self.queues.check(&queue).await {
            Ok(limit) => limit,
            Err(reply) => return self.refused(reply, "recipient"),
        };
        if limit > 0 && state.declared > limit {
            let reply = Reply::new(
                552,
                [5, 3, 4],
                format!("queue {queue} takes messages of at most {limit} bytes"),
            );
            return self.refused(reply, "size");
        }
        if limit > 0 {
            state.limit = state.limit.min(limit);
        }
        if !state.recipients.iter().any(|(_, known)| *known == queue) {
            state.recipients.push((address.to_string(), queue));
        }
        Reply::new(250, [2, 1, 5], "recipient ok")
    }

    /// Stores a whole mail in each recipient's queue; the reply to its final dot.
    async fn deliver(&self, mail: &[u8], state: &State, peer: std::net::SocketAddr) -> Reply {
        let sender = state.sender.clone().unwrap_or_default();
        let mut stored = Vec::new();
        for (recipient, queue) in &state.recipients {
            let envelope = Envelope {
                domain: &self.domain,
                sender: &sender,
                recipient,
            };
            let message = match to_message(mail, &envelope, |local| self.may_take(local)) {
                Ok(message) => message,
                Err(reply) => return self.refused_mail(reply, peer, &sender),
            };
            match self.queues.store(queue, message).await {
                Ok(id) => stored.push(format!("{queue}/{id}")),
                Err(reply) => return self.refused_mail(reply, peer, &sender),
            }
        }
        metrics::counter!("raftq_mail_inbound_accepted_total").increment(1);
        Reply::new(250, [2, 0, 0], format!("stored as {}", stored.join(" ")))
    }

    /// The queue a reply-to local part names, if the bridge would take mail for it.
    fn may_take(&self, local: &str) -> Option<String> {
        Queues::name(&self.config, local).ok()
    }

    fn refused(&self, reply: Reply, reason: &'static str) -> Reply {
        tracing::info!(%reply, "recipient refused");
        count_refusal(&reply, reason);
        reply
    }

    fn refused_mail(&self, reply: Reply, peer: std::net::SocketAddr, sender: &str) -> Reply {
        tracing::info!(%peer, sender, %reply, "mail refused");
        count_refusal(&reply, "mail");
        reply
    }
}

fn count_refusal(reply: &Reply, reason: &'static str) {
    if reply.code < 500 {
        metrics::counter!("raftq_mail_inbound_deferred_total").increment(1);
    } else {
        metrics::counter!("raftq_mail_inbound_refused_total", "reason" => reason).increment(1);
    }
}

/// Writes the replies, within [`WRITE`].
async fn send<S: AsyncWrite + Unpin>(io: &mut S, out: &[u8]) -> std::io::Result<()> {
    let write = async {
        io.write_all(out).await?;
        io.flush().await
    };
    tokio::time::timeout(WRITE, write).await.map_err(|_| {
        std::io::Error::new(std::io::ErrorKind::TimedOut, "the client does not read")
    })?
}

enum Next {
    Continue,
    Data,
    Quit,
    StartTls,
}

/// The reply to a line that is not a command smtp-proto could read.
fn syntax_reply(error: &ParseError) -> Reply {
    match error {
        ParseError::UnknownCommand => Reply::new(500, [5, 5, 1], "command not recognised"),
        ParseError::InvalidSenderAddress => Reply::new(501, [5, 1, 7], "bad sender address"),
        ParseError::InvalidRecipientAddress => Reply::new(501, [5, 1, 3], "bad recipient address"),
        ParseError::SyntaxError { syntax } => {
            Reply::new(501, [5, 5, 4], format!("syntax: {syntax}"))
        }
        ParseError::InvalidParameter { param } => {
            Reply::new(501, [5, 5, 4], format!("invalid parameter {param}"))
        }
        ParseError::UnsupportedParameter { param } => {
            Reply::new(555, [5, 5, 4], format!("unsupported parameter {param}"))
        }
        ParseError::ResponseTooLong => Reply::new(500, [5, 5, 6], "line too long"),
        ParseError::NeedsMoreData { .. } | ParseError::InvalidResponse { .. } => {
            Reply::new(500, [5, 5, 2], "syntax error")
        }
    }
}
