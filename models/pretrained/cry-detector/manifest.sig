{
  "algorithm": "ed25519",
  "key_id": "02300754002184d2",
  "signature": "Gq7C/Sz9yPvAtml1a/hPi12nZ/w5A0y7xvcMIhB1D8taTYkdXyyJ8Tqbg6M5BA5q7jxmN5aTIfVaMKQCs4D5Bg=="
}
