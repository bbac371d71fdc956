#[test]
fn probe() {
    use incentives::json::*;
    let cases: &[&str] = &[
        r#"{"type":"data_logged","user_id":5,"employer_id":"a","event_time":"2026-03-01T00:00:00Z","data_kinds":["mood"]}"#,
        r#"{"type":"data_logged","employer_id":"a","event_time":"2026-03-01T00:00:00Z","data_kinds":["mood"]}"#,
        r#"{"type":"data_logged","user_id":"u","employer_id":"a","event_time":"yesterday","data_kinds":["mood"]}"#,
        r#"{"type":"data_logged","user_id":"u","employer_id":"a","event_time":"2026-03-01 00:00:00+02:00","data_kinds":["mood"], "extra": 1}"#,
        r#"{"type":"nope","user_id":"u"}"#,
        r#"{"user_id":"u"}"#,
        r#"{"type":"birth_reported","user_id":"u","employer_id":"a","event_time":"2026-03-01T00:00:00Z","birth_date":"2026-13-01"}"#,
    ];
    for c in cases {
        let v: serde_json::Value = serde_json::from_str(c).unwrap();
        println!("{:?}", parse_value::<EventJson>(v).map(|_| ()));
    }
    println!("{:?}", parse::<DataLoggedJson>(br#"{"type":"data_logged","user_id":"u","employer_id":"a","event_time":"2026-03-01T00:00:00Z","data_kinds":["mood"]}"#).map(|_| ()));
    println!("{:?}", parse::<DataLoggedJson>(br#"{"user_id":"u","employer_id":"a","event_time":"2026-03-01 00:00:00.123456+02:00","data_kinds":["mood"]}"#).map(|e| e.event_time));
    println!("{:?}", parse::<DataLoggedJson>(br#"{"event_id":null,"time_zone":null,"user_id":"u","employer_id":"a","event_time":"2026-03-01t00:00:00z","data_kinds":["mood"]}"#).map(|e| e.event_time));
}
