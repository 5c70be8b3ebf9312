{
  "algorithm": "ed25519",
  "key_id": "039cfe3e99436e86",
  "signature": "0EeF/RB5jQwtakhNpSdGLc/5RKRb3TvFZcJSJ9hwiuHrlMSYAYgVMaoTvpahc1N+WBrKi68DT3uGmjka9cm3DA=="
}
