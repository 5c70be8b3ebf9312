{
  "algorithm": "ed25519",
  "key_id": "02300754002184d2",
  "signature": "eg5Vy80LMnNH5PzDuKkInPWyz8D1muIoi5Fz5Mo7m0AqLeEqkQcm7zv1IKm7wiqJ7SVGUyOm3fFFup97U5nbCQ=="
}
