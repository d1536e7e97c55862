//! What the policy hears of a transaction, in the upstream's order.

use std::time::Duration;

use super::*;

#[test]
fn transaction_events_follow_the_upstream_replies_in_order() {
    let mut t = session();
    t.greet();
    t.tx_events.clear();
    t.client(
        b"MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nRCPT TO:<c@y>\r\nMAIL FROM:<again@x>\r\nDATA\r\n",
    );
    assert_eq!(
        t.upstream_got(),
        "MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nRCPT TO:<c@y>\r\n",
        "the second MAIL waits for the first one's reply"
    );
    t.upstream(b"250 ok\r\n250 ok\r\n550 no\r\n");
    assert_eq!(
        t.client_got(),
        "250 ok\r\n250 ok\r\n550 no\r\n503 5.5.1 Error: nested MAIL command\r\n"
    );
    assert_eq!(t.upstream_got(), "DATA\r\n");
    t.upstream(b"354 go\r\n");
    assert_eq!(
        t.tx_events,
        [
            TxEvent::RcptReply { accepted: true },
            TxEvent::RcptReply { accepted: false }
        ],
    );
    assert!(t.checked[0].first_in_transaction && !t.checked[1].first_in_transaction);
    t.client(b"hi\r\n.\r\n");
    assert_eq!(t.tx_events.last(), Some(&TxEvent::EndSent));
    t.advance(Duration::from_millis(1500));
    t.upstream(b"250 queued\r\n");
    let message = MessageInfo {
        size: 7,
        waited: Duration::from_millis(1500),
    };
    assert_eq!(
        t.tx_events.last(),
        Some(&TxEvent::End {
            delivered: true,
            message
        })
    );
    t.tx_events.clear();
    t.client(b"MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nRSET\r\n");
    t.upstream(b"250 ok\r\n250 ok\r\n250 reset\r\n");
    assert_eq!(
        t.tx_events,
        [TxEvent::RcptReply { accepted: true }, TxEvent::Reset]
    );
    t.tx_events.clear();
    t.client(b"MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\n");
    t.upstream(b"250 ok\r\n250 ok\r\n354 go\r\n");
    t.client(b"hi\r\n.\r\n");
    t.upstream(b"554 rejected\r\n");
    assert!(matches!(
        t.tx_events.last(),
        Some(&TxEvent::End {
            delivered: false,
            ..
        })
    ));
}
