"""HTTP routes: parse, call one handler, shape the response. No queries or commits here."""
