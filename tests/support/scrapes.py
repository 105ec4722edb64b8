"""Reading /metrics in tests, and an address where nothing listens."""

from prometheus_client.parser import text_string_to_metric_families

from devtools.servers import free_port


def closed_port_url() -> str:
    return f"redis://127.0.0.1:{free_port()}"


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape, by name and sorted labels."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found
