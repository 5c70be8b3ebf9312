{
  "algorithm": "ed25519",
  "key_id": "039cfe3e99436e86",
  "signature": "+Rq/deAxlLTls+D2JT/UoXlyHLD/zl3Mzir/WVM+ceWL32iailbGRiYwzJ0dFM876dMqjHHsJovsa8TusIFdDg=="
}
