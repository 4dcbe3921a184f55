//! STARTTLS both ways: Postfix to the bridge (required by both), the bridge to Postfix
//! (the relay's certificate checked against the CA).

use raftq_client::Message;

use crate::common::{DOMAIN, OUT, Setup, header};
use crate::smtp::Smtp;

#[tokio::test(flavor = "multi_thread")]
async fn with_tls_required_mail_flows_over_starttls_both_ways_and_plaintext_mail_is_refused() {
    let setup = Setup::start_with(true).await;
    // A client that does not start TLS is told to.
    let mut smtp = Smtp::connect(setup.smtp_port).await;
    let (code, ehlo) = smtp.command("EHLO plain.example.org").await;
    assert_eq!(code, 250);
    assert!(ehlo.contains("STARTTLS"), "{ehlo}");
    let refused = smtp.command("MAIL FROM:<a@example.org>").await;
    assert_eq!((refused.0, &refused.1[..5]), (530, "5.7.0"), "{refused:?}");

    // Postfix delivers to the bridge over TLS, having checked its certificate.
    let mail = format!(
        "Subject: over tls\r\nMessage-ID: <tls-1@example.org>\r\nTo: orders@{DOMAIN}\r\n\r\nx\r\n"
    );
    setup.postfix.sendmail(
        "alice@example.org",
        &[&format!("orders@{DOMAIN}")],
        mail.as_bytes(),
    );
    let stored = setup.messages("orders", 1).await;
    assert_eq!(
        stored[0].properties.clone().unwrap_or_default().label,
        "over tls"
    );
    let log = setup.postfix.log();
    assert!(
        log.contains("Trusted TLS connection established to 127.0.0.1"),
        "{log}"
    );

    // The bridge delivers to Postfix with STARTTLS.
    let sent = setup
        .client
        .send(
            OUT,
            Message::new(b"sealed".to_vec()).with_header("mail-to", "dora@example.org"),
        )
        .await
        .expect("send");
    let mails = setup.delivered(1).await;
    assert_eq!(
        header(&mails[0], "Message-ID"),
        Some(format!("<raftq.{}@{DOMAIN}>", sent.message_id).as_str())
    );
    let log = setup.postfix.log();
    assert!(
        log.contains("TLS connection established from localhost[127.0.0.1]")
            || log.contains("TLS connection established from unknown[127.0.0.1]"),
        "{log}"
    );
}
