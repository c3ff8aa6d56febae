"""What a machine without infrastructure needs to run the whole job: an embedded Redis,
a private RabbitMQ node, worker processes, the provider simulator and the demo.

Production code never imports this package (tests, the benchmark and the CLI's
``demo`` / ``simulate`` commands do).
"""
