"""The register's machine-readable feeds of new approvals and releases: JSON Feed 1.1
(https://jsonfeed.org/version/1.1) and Atom (RFC 4287, written by ``feedgen``)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from feedgen.feed import FeedGenerator

from mercia.governance import Governance
from mercia.services.register import register_events

FEED_TITLE = "Mercia public register: approvals and released outputs"
AUTHOR = "Mercia research governance"


def _moment(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


def _items(gov: Governance, base_url: str) -> list[dict[str, Any]]:
    """Each event as id, link, title, text, time and tag, the same for both feeds."""
    items = []
    for event in register_events(gov):
        if event["kind"] == "approval":
            p = event["project"]
            url = f"{base_url}/register/projects/{p['id']}"
            items.append({"id": f"{url}#approved", "url": url, "title": f"Approved: {p['title']}",
                          "text": f"{p['pillar_name']} pillar. Led by {p['lead']}, {p['lead_organisation']}. "
                                  f"{p['lay_summary']}", "at": event["at"], "tag": "approval"})
        else:
            r = event["release"]
            url = f"{base_url}/register/projects/{r['project_id']}"
            items.append({"id": f"{url}#release-{r['id']}", "url": f"{url}#release-{r['id']}",
                          "title": f"Output released: {r['description']} ({r['project_title']})",
                          "text": f"{r['kind']} released on {r['released']} from the project {r['project_title']}.",
                          "at": event["at"], "tag": "release"})
    return items


def json_feed(gov: Governance, base_url: str) -> dict[str, Any]:
    return {"version": "https://jsonfeed.org/version/1.1", "title": FEED_TITLE,
            "home_page_url": f"{base_url}/register", "feed_url": f"{base_url}/register/feed.json",
            "authors": [{"name": AUTHOR}], "language": "en-GB",
            "items": [{"id": i["id"], "url": i["url"], "title": i["title"], "content_text": i["text"],
                       "date_published": _moment(i["at"]).isoformat(), "tags": [i["tag"]]}
                      for i in _items(gov, base_url)]}


def atom_feed(gov: Governance, base_url: str) -> bytes:
    feed = FeedGenerator()
    feed.id(f"{base_url}/register")
    feed.title(FEED_TITLE)
    feed.author({"name": AUTHOR})
    feed.link(href=f"{base_url}/register", rel="alternate")
    feed.link(href=f"{base_url}/register/feed.atom", rel="self")
    feed.language("en-GB")
    items = _items(gov, base_url)
    feed.updated(_moment(items[0]["at"]) if items else datetime(2000, 1, 1, tzinfo=UTC))
    for item in items:
        entry = feed.add_entry(order="append")
        entry.id(item["id"])
        entry.title(item["title"])
        entry.link(href=item["url"])
        entry.summary(item["text"])
        entry.published(_moment(item["at"]))
        entry.updated(_moment(item["at"]))
        entry.category(term=item["tag"])
    return feed.atom_str(pretty=True)
