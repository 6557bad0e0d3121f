"""Delivery to the internet (docs/behaviour.md §6): the queue runner, routing (MX, null
MX, transport map), the SMTP client, transport security (DANE, MTA-STS), delivery status
reports (RFC 3464) and DKIM signing."""
