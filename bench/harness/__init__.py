"""The parts of bench/licensing.py: seeding, servers, load processes, pgbench, the report."""
