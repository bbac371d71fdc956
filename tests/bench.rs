//! The parts of `incentives bench` that need the broker (scripts/test.sh
//! starts it; see tests/common for the settings).

mod common;

use common::{birth, logged, march, TestEnv};
use incentives::bench::LogEnd;

/// The live probes judge the lag against the records in the input topics'
/// logs, not against the acknowledgements a producer on the same cores
/// hears late: every record published to either input topic moves the sum
/// of their end offsets by one.
#[test]
fn the_log_end_counts_every_record_of_both_input_topics() {
    let env = TestEnv::new("bench-log-end", 3);
    let s = &env.config.settings;
    let log_end = LogEnd::connect(&s.kafka.brokers, &s.topics)
        .unwrap_or_else(|e| panic!("end offsets of the test topics: {e}"));
    assert_eq!(log_end.read(), Some(0), "fresh topics hold no records");
    let mut events: Vec<_> = (0..7)
        .map(|i| logged(&format!("log-end-{i}"), &march(2 + i), None))
        .collect();
    events.push(birth("log-end-0", "log-end-birth-1", &march(3)));
    events.push(birth("log-end-1", "log-end-birth-2", &march(4)));
    env.publish(&events);
    assert_eq!(log_end.read(), Some(9), "7 data-logged and 2 births");
    env.publish(&events[..2]);
    assert_eq!(log_end.read(), Some(11));
}
