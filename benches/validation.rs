//! Micro-benchmarks of request validation, the CPU work of every accept:
//! the field checks alone, and JSON parsing plus validation as the API does.
//!
//! `cargo bench --bench validation`.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use herald::domain::validation::{
    RawEmail, RawSms, is_valid_email, is_valid_phone, validate_email, validate_sms,
};

fn fields(c: &mut Criterion) {
    let mut g = c.benchmark_group("validation/fields");
    g.bench_function("phone ok +880", |b| {
        b.iter(|| is_valid_phone(black_box("+8801712345678")))
    });
    g.bench_function("phone bad", |b| {
        b.iter(|| is_valid_phone(black_box("+1-555-0100")))
    });
    g.bench_function("email ok", |b| {
        b.iter(|| is_valid_email(black_box("ada.lovelace@example.com")))
    });
    g.bench_function("email bad", |b| {
        b.iter(|| is_valid_email(black_box("ada lovelace@example")))
    });
    g.finish();
}

const SMS: &[u8] = br#"{"phone":"01712345678","text":"Your code is 123456"}"#;
const EMAIL: &[u8] = br#"{"subject":"Welcome","body":"Hello Ada, welcome to Herald.","recipients":["ada@example.com","grace@example.org"]}"#;
const BAD_SMS: &[u8] = br#"{"phone":"12345","text":"   "}"#;

fn bodies(c: &mut Criterion) {
    let mut g = c.benchmark_group("validation/parse+validate");
    g.bench_function("sms", |b| {
        b.iter(|| {
            let raw: RawSms = serde_json::from_slice(black_box(SMS)).unwrap();
            validate_sms(raw).is_ok()
        })
    });
    g.bench_function("email 2 recipients", |b| {
        b.iter(|| {
            let raw: RawEmail = serde_json::from_slice(black_box(EMAIL)).unwrap();
            validate_email(raw).is_ok()
        })
    });
    g.bench_function("sms invalid (two errors)", |b| {
        b.iter(|| {
            let raw: RawSms = serde_json::from_slice(black_box(BAD_SMS)).unwrap();
            validate_sms(raw).is_err()
        })
    });
    // The message as it is stored and sent on.
    let raw: RawSms = serde_json::from_slice(SMS).unwrap();
    let message = validate_sms(raw).unwrap();
    g.bench_function("sms to_provider_json", |b| {
        b.iter(|| black_box(&message).to_provider_json())
    });
    g.finish();
}

criterion_group!(benches, fields, bodies);
criterion_main!(benches);
