//! A plain SMTP client for talking to the bridge line by line, as a mail server would:
//! each call returns the reply's code and text.

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

pub struct Smtp {
    stream: BufReader<TcpStream>,
}

impl Smtp {
    /// Connects and reads the greeting.
    pub async fn connect(port: u16) -> Smtp {
        let stream = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect to the bridge");
        let mut smtp = Smtp {
            stream: BufReader::new(stream),
        };
        let (code, _) = smtp.reply().await;
        assert_eq!(code, 220, "greeting");
        smtp
    }

    /// Sends one command line and reads its reply.
    pub async fn command(&mut self, line: &str) -> (u16, String) {
        self.write(format!("{line}\r\n").as_bytes()).await;
        self.reply().await
    }

    /// Writes raw bytes (a mail's body, or pipelined commands).
    pub async fn write(&mut self, bytes: &[u8]) {
        self.stream.get_mut().write_all(bytes).await.expect("write");
    }

    /// Reads one (possibly multi-line) reply: its code and all its text.
    pub async fn reply(&mut self) -> (u16, String) {
        let mut text = String::new();
        loop {
            let mut line = String::new();
            let read = self
                .stream
                .read_line(&mut line)
                .await
                .expect("read a reply");
            assert!(read > 0, "the bridge closed the connection; so far: {text}");
            let code: u16 = line
                .get(..3)
                .and_then(|code| code.parse().ok())
                .expect("a reply code");
            text.push_str(line.get(4..).unwrap_or("").trim_end());
            text.push('\n');
            if line.as_bytes().get(3) != Some(&b'-') {
                return (code, text);
            }
        }
    }

    /// MAIL, RCPT and DATA for one mail; the reply to its final dot (or the first refusal).
    pub async fn send(&mut self, from: &str, to: &str, body: &[u8]) -> (u16, String) {
        let (code, text) = self.command(&format!("MAIL FROM:<{from}>")).await;
        if code != 250 {
            return (code, text);
        }
        let (code, text) = self.command(&format!("RCPT TO:<{to}>")).await;
        if code != 250 {
            self.command("RSET").await;
            return (code, text);
        }
        let (code, text) = self.command("DATA").await;
        assert_eq!(code, 354, "DATA: {text}");
        self.write(body).await;
        self.write(b"\r\n.\r\n").await;
        self.reply().await
    }
}
