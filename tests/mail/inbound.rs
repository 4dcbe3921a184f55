//! Mail into queues: through Postfix with its `sendmail`, and line by line for bad input.

use raftq_tests::pb;

use crate::common::{DOMAIN, Setup, eventually};
use crate::smtp::Smtp;

fn order_mail(message_id: &str) -> Vec<u8> {
    format!(
        "From: Alice <alice@example.org>\r\nTo: orders@{DOMAIN}\r\nSubject: Order 1001\r\n\
         Message-ID: <{message_id}>\r\nIn-Reply-To: <raftq.77@{DOMAIN}>\r\n\
         Reply-To: replies@{DOMAIN}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n\
         Two boxes of tea, please.\r\n"
    )
    .into_bytes()
}

fn properties(message: &pb::PeekedMessage) -> pb::MessageProperties {
    message.properties.clone().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn mail_from_sendmail_reaches_its_queue_with_its_fields_mapped_and_a_resend_is_stored_once() {
    let setup = Setup::start().await;
    let mail = order_mail("order-1001@example.org");
    setup
        .postfix
        .sendmail("alice@example.org", &[&format!("orders@{DOMAIN}")], &mail);
    let stored = setup.messages("orders", 1).await;
    let message = &stored[0];
    let fields = properties(message);
    assert_eq!(fields.label, "Order 1001");
    assert_eq!(
        fields.correlation_id, "77",
        "In-Reply-To names an outbound mail"
    );
    assert_eq!(fields.reply_to, "replies");
    assert_eq!(fields.content_type, "message/rfc822");
    assert_eq!(message.headers["mail-from"], "alice@example.org");
    assert_eq!(message.headers["mail-message-id"], "order-1001@example.org");
    assert_eq!(
        message.headers["mail-envelope-to"],
        format!("orders@{DOMAIN}")
    );
    let body = String::from_utf8_lossy(&message.body);
    assert!(
        body.starts_with(&format!("X-Raftq-Loop: {DOMAIN}\r\n")),
        "{body}"
    );
    assert!(
        body.contains("Two boxes of tea, please."),
        "the whole mail: {body}"
    );
    assert!(
        body.contains("Received: "),
        "Postfix's trace is kept: {body}"
    );

    // The same mail again (a sender that did not see the first 250): stored once.
    setup
        .postfix
        .sendmail("alice@example.org", &[&format!("orders@{DOMAIN}")], &mail);
    eventually("Postfix handed the resend to the bridge", || async {
        setup
            .postfix
            .log()
            .matches(&format!("to=<orders@{DOMAIN}>"))
            .count()
            >= 2
            && setup.postfix.queued().is_empty()
    })
    .await;
    let log = setup.postfix.log();
    assert_eq!(
        log.matches("status=sent (250 2.0.0 stored as orders/")
            .count(),
        2,
        "{log}"
    );
    let stored = setup.peek("orders").await;
    assert_eq!(stored.len(), 1, "a resent mail is stored once");
}

#[tokio::test(flavor = "multi_thread")]
async fn with_the_cluster_down_postfix_is_told_451_keeps_the_mail_and_delivers_it_once_back() {
    let mut setup = Setup::start().await;
    setup.cluster.stop_all();
    setup.postfix.sendmail(
        "alice@example.org",
        &[&format!("orders@{DOMAIN}")],
        &order_mail("while-down@example.org"),
    );
    eventually("Postfix defers the mail on the bridge's 451", || async {
        setup.postfix.queued().iter().any(|mail| {
            mail["recipients"][0]["delay_reason"]
                .as_str()
                .is_some_and(|reason| reason.contains("451 4.3.0"))
        })
    })
    .await;
    assert!(setup.metric("raftq_mail_inbound_deferred_total").await >= 1.0);
    setup.cluster.restart_all().await;
    setup.postfix.flush();
    let stored = setup.messages("orders", 1).await;
    setup.postfix_emptied().await;
    assert_eq!(stored.len(), 1);
    assert_eq!(
        stored[0].headers["mail-message-id"],
        "while-down@example.org"
    );
    assert_eq!(setup.peek("orders").await.len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_mail_and_bad_commands_get_precise_codes_and_store_nothing() {
    let setup = Setup::start().await;
    let mut smtp = Smtp::connect(setup.smtp_port).await;
    let (code, ehlo) = smtp.command("EHLO tester.example.org").await;
    assert_eq!(code, 250);
    assert!(
        ehlo.contains("SIZE 262144") && ehlo.contains("PIPELINING"),
        "{ehlo}"
    );
    assert_eq!(
        smtp.command("RCPT TO:<orders@q.test>").await.0,
        503,
        "RCPT before MAIL"
    );
    assert_eq!(smtp.command("FROB").await.0, 500, "unknown command");
    let unknown = smtp
        .send(
            "a@example.org",
            "nosuchqueue@q.test",
            b"Subject: x\r\n\r\nx",
        )
        .await;
    assert_eq!(unknown.0, 550, "{unknown:?}");
    assert!(unknown.1.starts_with("5.1.1"), "{unknown:?}");
    let relay = smtp
        .send(
            "a@example.org",
            "someone@example.org",
            b"Subject: x\r\n\r\nx",
        )
        .await;
    assert_eq!(relay.0, 550, "not our domain: {relay:?}");
    assert!(relay.1.starts_with("5.7.1"), "{relay:?}");
    let declared = smtp
        .command("MAIL FROM:<a@example.org> SIZE=999999999")
        .await;
    assert_eq!(declared.0, 552, "{declared:?}");

    // Too big: read to its end, refused, and the session goes on.
    let big = format!(
        "Subject: big\r\nMessage-ID: <big@x>\r\n\r\n{}",
        "y".repeat(300_000)
    );
    let oversized = smtp
        .send("a@example.org", "orders@q.test", big.as_bytes())
        .await;
    assert_eq!(
        (oversized.0, &oversized.1[..5]),
        (552, "5.3.4"),
        "{oversized:?}"
    );
    // A loop: this mail passed the bridge already.
    let looped =
        format!("X-Raftq-Loop: {DOMAIN}\r\nSubject: again\r\nMessage-ID: <loop@x>\r\n\r\nx");
    let refused = smtp
        .send("a@example.org", "orders@q.test", looped.as_bytes())
        .await;
    assert_eq!((refused.0, &refused.1[..5]), (554, "5.4.6"), "{refused:?}");
    // No header at all.
    let headless = smtp
        .send("a@example.org", "orders@q.test", b"\r\njust text")
        .await;
    assert_eq!(
        (headless.0, &headless.1[..5]),
        (554, "5.6.0"),
        "{headless:?}"
    );
    assert!(setup.peek("orders").await.is_empty());

    // Odd but acceptable: no Message-ID (a resend is still stored once), 8-bit headers,
    // broken MIME, a bounce's empty sender.
    let no_id = b"Subject: no id\r\n\r\nsame bytes\r\n";
    assert_eq!(
        smtp.send("a@example.org", "orders@q.test", no_id).await.0,
        250
    );
    assert_eq!(
        smtp.send("a@example.org", "orders@q.test", no_id).await.0,
        250
    );
    let eight_bit = b"Subject: caf\xc3\xa9 \xe9t\xe9\r\nMessage-ID: <8bit@x>\r\n\r\nx";
    assert_eq!(
        smtp.send("a@example.org", "orders@q.test", eight_bit)
            .await
            .0,
        250
    );
    let broken_mime = b"Subject: mime\r\nMessage-ID: <mime@x>\r\nContent-Type: multipart/mixed; boundary=\"zz\"\r\n\r\n--zz\r\nContent-Type: text/plain\r\n\r\nunterminated part";
    assert_eq!(
        smtp.send("a@example.org", "orders@q.test", broken_mime)
            .await
            .0,
        250
    );
    assert_eq!(
        smtp.send(
            "",
            "orders@q.test",
            b"Subject: bounce\r\nMessage-ID: <b@x>\r\n\r\nx"
        )
        .await
        .0,
        250
    );
    assert_eq!(smtp.command("QUIT").await.0, 221);

    let stored = setup.peek("orders").await;
    let labels: Vec<String> = stored
        .iter()
        .map(|message| properties(message).label)
        .collect();
    assert_eq!(labels.len(), 4, "{labels:?}");
    assert_eq!(labels[0], "no id");
    assert!(labels[1].starts_with("café"), "{labels:?}");
    assert_eq!(&labels[2..], ["mime", "bounce"]);
    assert!(setup.metric("raftq_mail_inbound_accepted_total").await >= 5.0);

    // A local part that cannot be a queue name is no such mailbox.
    let mut smtp = Smtp::connect(setup.smtp_port).await;
    assert_eq!(smtp.command("EHLO tester.example.org").await.0, 250);
    assert_eq!(smtp.command("MAIL FROM:<a@example.org>").await.0, 250);
    let odd = smtp.command("RCPT TO:<john+x@q.test>").await;
    assert_eq!((odd.0, &odd.1[..5]), (550, "5.1.1"), "{odd:?}");
    // A client that keeps being refused is cut off after 20 refusals (RSET does not
    // clear them), with 421.
    assert_eq!(smtp.command("RSET").await.0, 250);
    assert_eq!(smtp.command("MAIL FROM:<a@example.org>").await.0, 250);
    for _ in 0..19 {
        assert_eq!(smtp.command("RCPT TO:<nosuchqueue@q.test>").await.0, 550);
    }
    let cut = smtp.command("RCPT TO:<nosuchqueue@q.test>").await;
    assert_eq!(cut.0, 550, "{cut:?}");
    let (code, text) = smtp.reply().await;
    assert_eq!(code, 421, "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bridge_with_its_own_principal_takes_mail_only_where_it_may_send_and_delivers() {
    let setup = Setup::start_as_principal().await;
    let mut smtp = Smtp::connect(setup.smtp_port).await;
    assert_eq!(smtp.command("EHLO tester.example.org").await.0, 250);
    let allowed = smtp
        .send(
            "a@example.org",
            "orders@q.test",
            b"Subject: granted\r\nMessage-ID: <g@x>\r\n\r\nx",
        )
        .await;
    assert_eq!(allowed.0, 250, "{allowed:?}");
    // No grant on `replies`: deferred at RCPT (the sender keeps the mail until an operator
    // grants it), naming why.
    let refused = smtp
        .send(
            "a@example.org",
            "replies@q.test",
            b"Subject: no\r\nMessage-ID: <n@x>\r\n\r\nx",
        )
        .await;
    assert_eq!((refused.0, &refused.1[..5]), (451, "4.7.0"), "{refused:?}");
    assert!(refused.1.contains("may not send"), "{refused:?}");
    assert!(setup.peek("replies").await.is_empty());
    assert_eq!(setup.peek("orders").await.len(), 1);
    // Outbound with receive and browse only, including a rejection to the dead-letter queue.
    let message =
        raftq_client::Message::new(b"x".to_vec()).with_header("mail-to", "bob@example.org");
    setup
        .client
        .send(crate::common::OUT, message)
        .await
        .expect("send");
    setup.delivered(1).await;
    setup
        .client
        .send(
            crate::common::OUT,
            raftq_client::Message::new(b"no recipient".to_vec()),
        )
        .await
        .expect("send");
    let dead = setup
        .messages(&format!("{}.dlq", crate::common::OUT), 1)
        .await;
    assert_eq!(dead[0].headers["raftq-dead-letter-reason"], "rejected");
}
