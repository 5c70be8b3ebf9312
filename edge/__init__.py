"""soundwarden edge: the listening daemon for a Raspberry Pi. Imports only the light core of
`models`; never torch, librosa, ultralytics or `cloud`."""
