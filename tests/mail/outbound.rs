//! Queues out to mail through Postfix into the maildir; refusals, retries, replies, and a
//! bridge killed with -9 mid-delivery.

use std::collections::BTreeMap;

use raftq_client::Message;
use raftq_tests::mail::{BOUNCE, DEFER};
use raftq_tests::pb;

use crate::common::{DOMAIN, OUT, Setup, eventually, header};

fn outbound(to: &str, subject: &str, body: &str) -> Message {
    Message::new(body.as_bytes().to_vec())
        .with_header("mail-to", to)
        .with_properties(pb::MessageProperties {
            label: subject.into(),
            reply_to: "replies".into(),
            ..pb::MessageProperties::default()
        })
        .with_acknowledgements("acks", true, true)
}

#[tokio::test(flavor = "multi_thread")]
async fn an_outbound_message_arrives_in_the_maildir_with_the_right_headers_and_is_acknowledged() {
    let setup = Setup::start().await;
    let sent = setup
        .client
        .send(
            OUT,
            outbound(
                "Bob <bob@example.org>",
                "Order 7 shipped",
                "Your order is on its way.\n",
            ),
        )
        .await
        .expect("send");
    let mails = setup.delivered(1).await;
    let mail = &mails[0];
    let id = sent.message_id;
    assert_eq!(
        header(mail, "Message-ID"),
        Some(format!("<raftq.{id}@{DOMAIN}>").as_str()),
        "{mail}"
    );
    assert_eq!(header(mail, "Subject"), Some("Order 7 shipped"));
    assert_eq!(header(mail, "To"), Some("Bob <bob@example.org>"));
    assert_eq!(
        header(mail, "From"),
        Some(format!("raftq@{DOMAIN}").as_str())
    );
    assert_eq!(
        header(mail, "Reply-To"),
        Some(format!("replies@{DOMAIN}").as_str())
    );
    assert_eq!(
        header(mail, "X-Raftq-Message-Id"),
        Some(id.to_string().as_str())
    );
    assert!(mail.contains("Your order is on its way."), "{mail}");
    // Acknowledged once the relay took it: the sender's acknowledgement says so.
    let acks = setup.messages("acks", 1).await;
    assert_eq!(acks[0].headers["raftq-ack-kind"], "consumed");
    assert_eq!(
        acks[0]
            .properties
            .clone()
            .unwrap_or_default()
            .correlation_id,
        id.to_string()
    );
    assert!(setup.peek(OUT).await.is_empty());
    assert_eq!(
        setup.metric("raftq_mail_outbound_delivered_total").await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_recipient_is_dead_lettered_with_the_relays_reply_and_a_deferred_one_waits_longer_each_time()
 {
    let setup = Setup::start().await;
    let bounced = setup
        .client
        .send(OUT, outbound(BOUNCE, "for nobody", "x"))
        .await
        .expect("send");
    let dead = setup.messages(&format!("{OUT}.dlq"), 1).await;
    assert_eq!(dead[0].headers["raftq-dead-letter-reason"], "rejected");
    let detail = &dead[0].headers["raftq-dead-letter-detail"];
    assert!(
        detail.contains("550") && detail.contains("5.1.1"),
        "the relay's reply: {detail}"
    );
    let acks = setup.messages("acks", 1).await;
    assert_eq!(
        acks[0].headers["raftq-ack-kind"], "rejected",
        "never `consumed`"
    );
    assert_eq!(
        acks[0]
            .properties
            .clone()
            .unwrap_or_default()
            .correlation_id,
        bounced.message_id.to_string()
    );
    assert!(acks[0].headers["raftq-dead-letter-detail"].contains("550"));

    // 451 from the relay: released with a delay, tried again, never dead-lettered.
    setup
        .client
        .send(OUT, outbound(DEFER, "later", "x"))
        .await
        .expect("send");
    eventually("the deferred mail was tried four times", || async {
        let peeked = setup.peek(OUT).await;
        peeked
            .first()
            .is_some_and(|message| message.deliveries >= 4)
    })
    .await;
    let peeked = setup.peek(OUT).await;
    assert_eq!(peeked.len(), 1);
    assert!(setup.metric("raftq_mail_outbound_deferred_total").await >= 3.0);
    assert_eq!(setup.peek(&format!("{OUT}.dlq")).await.len(), 1);
    assert!(
        setup.bridge.log().contains("delivery deferred"),
        "{}",
        setup.bridge.log()
    );
    // The delays grow: 200, 400, 800 ms then the 1 s cap, logged per attempt.
    let log = setup.bridge.log();
    for delay in ["200ms", "400ms", "800ms"] {
        assert!(log.contains(&format!("delay={delay}")), "{delay} in {log}");
    }
    // A message that cannot be a mail at all is dead-lettered at once.
    setup
        .client
        .send(OUT, Message::new(b"no recipient".to_vec()))
        .await
        .expect("send");
    let dead = setup.messages(&format!("{OUT}.dlq"), 2).await;
    assert!(
        dead[1].headers["raftq-dead-letter-detail"].contains("mail-to"),
        "{:?}",
        dead[1].headers
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reply_to_an_outbound_mail_arrives_in_the_reply_to_queue_correlated_with_the_original() {
    let setup = Setup::start().await;
    let sent = setup
        .client
        .send(
            OUT,
            outbound(
                "carol@example.org",
                "Can you confirm?",
                "Please confirm the order.",
            ),
        )
        .await
        .expect("send");
    let mails = setup.delivered(1).await;
    let original_id = header(&mails[0], "Message-ID")
        .expect("Message-ID")
        .to_string();
    let reply_to = header(&mails[0], "Reply-To").expect("Reply-To").to_string();
    // Carol answers from her mail program: to the Reply-To, In-Reply-To the original.
    let reply = format!(
        "From: carol@example.org\r\nTo: {reply_to}\r\nSubject: Re: Can you confirm?\r\n\
         Message-ID: <reply-1@example.org>\r\nIn-Reply-To: {original_id}\r\n\
         References: {original_id}\r\n\r\nConfirmed.\r\n"
    );
    setup
        .postfix
        .sendmail("carol@example.org", &[&reply_to], reply.as_bytes());
    let replies = setup.messages("replies", 1).await;
    let properties = replies[0].properties.clone().unwrap_or_default();
    assert_eq!(properties.correlation_id, sent.message_id.to_string());
    assert_eq!(properties.label, "Re: Can you confirm?");
    assert!(String::from_utf8_lossy(&replies[0].body).contains("Confirmed."));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_bridge_killed_mid_delivery_loses_no_mail_either_way() {
    let mut setup = Setup::start().await;
    const OUTBOUND: usize = 1_000;
    const INBOUND: usize = 100;
    let mut ids = Vec::new();
    for chunk in 0..OUTBOUND / 100 {
        let batch: Vec<Message> = (0..100)
            .map(|i| {
                let n = chunk * 100 + i;
                outbound(&format!("user{n}@example.org"), &format!("mail {n}"), "x")
            })
            .collect();
        let sent = setup.client.send_batch(OUT, batch).await.expect("send");
        ids.extend(sent.into_iter().map(|sent| sent.message_id));
    }
    // Inbound mail submitted meanwhile, from a thread of its own.
    let config_dir = setup.postfix.config_dir();
    let submitting = std::thread::spawn(move || {
        for n in 0..INBOUND {
            let mail = format!("Subject: in {n}\r\nMessage-ID: <in-{n}@example.org>\r\n\r\nx\r\n");
            let to = format!("orders@{DOMAIN}");
            raftq_tests::mail::sendmail(&config_dir, "alice@example.org", &[&to], mail.as_bytes());
        }
    });
    // Kill it while mail flows both ways, twice: once a tenth, then four tenths, of the
    // outbound messages were delivered, with the rest still waiting.
    for (round, delivered) in [(1, OUTBOUND / 10), (2, OUTBOUND * 4 / 10)] {
        let depth = || async { raftq_tests::queue_stats(&setup.client, OUT).await.depth as usize };
        eventually("some outbound mail was delivered", || async {
            depth().await <= OUTBOUND - delivered
        })
        .await;
        setup.bridge.kill();
        let waiting = depth().await;
        assert!(
            waiting > 0,
            "kill {round} came after the outbound queue was done"
        );
        setup.bridge.restart();
    }
    submitting.join().expect("the submitting thread");
    setup.wait_ready().await;
    // Every outbound message became mail at least once, under its own Message-ID.
    let expected: BTreeMap<String, u64> = ids
        .iter()
        .map(|id| (format!("<raftq.{id}@{DOMAIN}>"), *id))
        .collect();
    eventually("every outbound message was delivered", || async {
        let seen: std::collections::BTreeSet<String> = setup
            .sink
            .mails()
            .iter()
            .filter_map(|mail| {
                header(&String::from_utf8_lossy(mail), "Message-ID").map(str::to_string)
            })
            .collect();
        expected.keys().all(|id| seen.contains(id))
    })
    .await;
    eventually("the outbound queue is empty", || async {
        setup.peek(OUT).await.is_empty()
    })
    .await;
    let mails = setup.sink.mails();
    let duplicates = mails.len() - OUTBOUND;
    for mail in &mails {
        let mail = String::from_utf8_lossy(mail);
        let id = header(&mail, "Message-ID").expect("Message-ID");
        assert!(
            expected.contains_key(id),
            "a mail the test did not send: {id}"
        );
    }
    println!(
        "outbound: {OUTBOUND} messages, {} mails ({duplicates} delivered again)",
        mails.len()
    );
    // Every inbound mail is stored exactly once, whatever the kills interrupted.
    setup.postfix_emptied().await;
    let stored = setup.messages("orders", INBOUND).await;
    let mut labels: Vec<String> = stored
        .iter()
        .map(|message| message.properties.clone().unwrap_or_default().label)
        .collect();
    labels.sort();
    labels.dedup();
    assert_eq!(stored.len(), INBOUND, "stored once each");
    assert_eq!(labels.len(), INBOUND);
    assert!(setup.peek(&format!("{OUT}.dlq")).await.is_empty());
}
