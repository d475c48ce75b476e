"""sipproxy: the SIP B2BUA and RTP relay that anchor calls in front of the PBX."""
