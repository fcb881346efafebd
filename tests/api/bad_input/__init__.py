"""Bad input to every RPC, through a real server on both backends.

Every case must come back with its exact code, an ErrorInfo in the keyturn.dev
domain with the right reason (and the metadata the case names), for
INVALID_ARGUMENT a BadRequest naming the offending field, never INTERNAL, and
must leave every table as it was.

Where to look:

- `world.py`: the small world the cases run against (built once per backend, in
  `conftest.py`), and the names of what it holds.
- `cases.py`: what a case is (`Case`, `invalid(...)`, `refused(...)`), the RPC table.
- `builders.py`: request builders, and one well-formed request per RPC.
- `generated.py`: the cases that repeat for every field, written from the request
  descriptors: strings 10,000 characters long or with a NUL, enums out of range,
  negative page sizes and garbage page tokens, required fields left empty.
- One module per topic, each with the cases written by hand and the generated
  ones of its RPCs: `test_catalog.py`, `test_orders.py`, `test_order_changes.py`,
  `test_entitlement_reads.py`, `test_licensing.py`, `test_transport.py`
  (undecodable requests, bearer tokens and scopes).
- `running.py`: how a case is run and checked; `test_coverage.py`: the cases
  themselves (unique names, every RPC of the contract covered).

Adding a case: a new field gets its generated cases by itself (list it in
`generated.REQUIRED` if it must be given); a new rule gets an `invalid(...)` or
`refused(...)` in its topic's list. Run one topic with
`pytest tests/api/bad_input/test_catalog.py`, one RPC with `-k PutSku`, one
backend with `KEYTURN_TEST_BACKENDS=sqlite`.
"""
