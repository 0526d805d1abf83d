"""A case's page, live (portal/static/case-presence.js): who else is viewing it,
and who is typing, in real browsers, through the relay's own protocol.

Alice (Alpha) and Bob (Beta) share CASE-AB000001; Grace (Gamma) does not: she
cannot open the case, and the relay refuses her the case's room.
"""

from typing import Any

from playwright.sync_api import expect

from tests.portal.test_browser import CASE, Person, alice, bob, grace, no_csp_violations
from tests.support import WAIT

TOPIC = "case:CASE-AB000001"

# Grace's page, by hand: the portal's token, the relay's protocol, a join of
# the case's room; what the relay answered.
JOIN_AS_THE_PAGE = """async (topic) => {
  const config = await (await fetch("/nexus/api/realtime-config")).json();
  const socket = new WebSocket(config.url, ["nexus-relay.v1"]);
  const replies = [];
  return await new Promise((resolve, reject) => {
    socket.onmessage = (event) => {
      const frame = JSON.parse(event.data);
      replies.push(frame);
      if (frame.type === "ready") socket.send(JSON.stringify({type: "join", ref: "j", topic}));
      if (frame.ref === "j") { socket.close(); resolve(frame); }
    };
    socket.onopen = () => socket.send(JSON.stringify({type: "auth", token: config.token}));
    socket.onclose = (event) => reject(new Error(`closed ${event.code}: ${JSON.stringify(replies)}`)
    );
  });
}"""


def test_alice_and_bob_see_each_other_and_bob_typing_shows_on_alices_page(
    people: Person,
) -> None:
    a, b = alice(people), bob(people)
    a.open(CASE)
    viewers = a.page.locator("#case-viewers li")
    expect(a.page.locator("#case-viewers-none")).to_be_visible()
    b.open(CASE)
    expect(viewers).to_have_text(["Bob Baker"])  # never an email
    expect(b.page.locator("#case-viewers li")).to_have_text(["Alice Archer"])
    expect(a.page.locator("#case-viewers-none")).to_be_hidden()

    typing = a.page.locator("#case-typing")
    expect(typing).to_be_hidden()
    b.page.locator("#message-body").press_sequentially("On my way")
    expect(typing).to_have_text("Bob Baker is typing…")
    # It expires 5 s (case-presence.js, TYPING_SHOWN_MS) after the last keystroke's event.
    expect(typing).to_be_hidden(timeout=3 * WAIT * 1000)
    expect(b.page.locator("#case-typing")).to_be_hidden()  # not one's own

    b.page.close()
    expect(a.page.locator("#case-viewers-none")).to_be_visible()
    expect(viewers).to_have_count(0)
    no_csp_violations(a, b)


def test_names_from_other_pages_render_as_text(people: Person) -> None:
    a, b = alice(people), bob(people)
    a.open(CASE)
    b.open(CASE)
    expect(a.page.locator("#case-viewers li")).to_have_text(["Bob Baker"])
    hostile = '<img src="x" onerror="alert(1)">'
    b.page.evaluate(
        "([topic, name]) => window.NexusRealtime.room(topic)"
        ".broadcast('typing', {key: 'someone', name})",
        [TOPIC, hostile],
    )
    expect(a.page.locator("#case-typing")).to_have_text(f"{hostile} is typing…")
    assert a.page.locator("#case-typing img").count() == 0
    assert a.dialogs == []


def test_grace_never_appears_and_cannot_join_the_cases_room(people: Person) -> None:
    a, g = alice(people), grace(people)
    a.open(CASE)
    response = g.page.goto(f"{g.portal.url}{CASE}")
    assert response is not None and response.status == 404
    expect(g.page.locator("#case-presence")).to_have_count(0)
    g.open("/nexus/")
    reply: dict[str, Any] = g.page.evaluate(JOIN_AS_THE_PAGE, TOPIC)
    assert (reply["type"], reply["code"]) == ("error", "topic_not_allowed"), reply
    # Bob joins after her: Alice's page lists him alone, and heard nothing of Grace.
    b = bob(people)
    b.open(CASE)
    expect(a.page.locator("#case-viewers li")).to_have_text(["Bob Baker"])
    assert not [f for f in a.frames_received if "Grace" in f or "GRAC" in f]
