{
  "algorithm": "ed25519",
  "key_id": "039cfe3e99436e86",
  "signature": "kz8RogQAHeEDTEAJdKz/HVimKahp0XzcqjtXBPBiVnabkRlJ6d+bm4mjKTzWejnz9FrEtTlxacL6tcSan8SsDQ=="
}
