"""Driving the admin in headless Chromium (Debian's ``chromium``) through Playwright.

The fixtures that open a browser are in ``tests/browser/conftest.py``; what a test calls is here.
"""

from __future__ import annotations

import os
from typing import Any

from tests.support import REPO

CHROMIUM = os.environ.get("CHROMIUM_BIN", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# The smallest common laptop screen: every admin page must fit its width without scrolling sideways.
VIEWPORT = {"width": 1366, "height": 768}
ARTIFACTS = REPO / "test-artifacts" / "browser"
PASSWORD = "correct horse battery staple"


def shoot(page: Any, test_name: str, step: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{test_name}--{step}.png"), full_page=True)


def log_in(page: Any, username: str = "operator", password: str = PASSWORD) -> None:
    page.goto("/admin/login/?next=/admin/")
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.click("input[type=submit]")


def sideways_scroll(page: Any) -> dict[str, Any]:
    """What scrolls sideways on the page: the document itself, or any box inside it.

    Django's changelist puts its table in a box that scrolls on its own, so the document's width
    alone misses a list that is too wide: every element whose content is wider than it is and that
    scrolls (or would hide the rest), and every table wider than the box it is in, is named here
    with its widths.
    """
    return page.evaluate(
        """() => {
            const s = document.scrollingElement;
            const name = (e) => e.tagName.toLowerCase() + (e.id ? "#" + e.id : "")
                + [...e.classList].map((c) => "." + c).join("");
            const boxes = [...document.querySelectorAll("body *")].filter((e) => {
                const overflow = getComputedStyle(e).overflowX;
                return overflow !== "visible" && overflow !== "clip" && e.scrollWidth > e.clientWidth + 1
                    && e.clientWidth > 20;
            }).map((e) => `${name(e)} ${e.scrollWidth}>${e.clientWidth}`);
            // A table wider than its box spills over what stands beside it without scrolling anything.
            const tables = [...document.querySelectorAll("table")].filter((t) => {
                const box = t.parentElement;
                return box && box.clientWidth > 20 && t.offsetWidth > box.clientWidth + 1;
            }).map((t) => {
                const box = t.parentElement;
                return `${name(t)} in ${name(box)} ${t.offsetWidth}>${box.clientWidth}`;
            });
            return {document: Math.max(0, s.scrollWidth - s.clientWidth), boxes: [...boxes, ...tables]};
        }"""
    )


def contrast_ratio(page: Any, selector: str) -> float:
    """WCAG contrast between an element's text colour and the first opaque background behind it."""
    return page.evaluate(
        """(selector) => {
            const rgb = (text) => text.match(/[\\d.]+/g).map(Number);
            const element = document.querySelector(selector);
            let box = element, background = [255, 255, 255, 0];
            while (box && (background = rgb(getComputedStyle(box).backgroundColor)).length === 4
                   && background[3] === 0) {
                box = box.parentElement;
            }
            const luminance = ([r, g, b]) => [r, g, b].map((v) => {
                v /= 255;
                return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4;
            }).reduce((sum, v, i) => sum + v * [0.2126, 0.7152, 0.0722][i], 0);
            const [a, b] = [luminance(rgb(getComputedStyle(element).color)), luminance(background)];
            return (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
        }""",
        selector,
    )
