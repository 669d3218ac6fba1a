// Drives the admin dashboard in headless Chromium (playwright-core, the system's
// /usr/bin/chromium) for t97: loads the page, waits until the topics table shows TOPIC with
// MESSAGES messages, opens the topic's partition table, and writes a screenshot.
//
// usage: node dashboard.js URL TOPIC MESSAGES SCREENSHOT.png
// Prints one JSON line: {topic, messages, partitions, nodes, groups, title, screenshot}.
// Exit 1 with the reason on stderr when the page does not show it within the timeout.
"use strict";

const { chromium } = require("playwright-core");

const TIMEOUT_MS = 30000;

async function main() {
  const [url, topic, messages, screenshot] = process.argv.slice(2);
  if (!url || !topic || !messages || !screenshot) {
    console.error("usage: node dashboard.js URL TOPIC MESSAGES SCREENSHOT.png");
    process.exit(2);
  }
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ["--headless", "--no-sandbox", "--disable-gpu"],
  });
  const errors = [];
  try {
    const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
    page.on("pageerror", (e) => errors.push(String(e)));
    page.on("console", (m) => { if (m.type() === "error") errors.push(m.text()); });
    await page.goto(url, { waitUntil: "load", timeout: TIMEOUT_MS });
    // Poll the page itself until the row carries the expected count (the page polls the API).
    await page.waitForFunction(
      ([t, n]) => {
        const row = [...document.querySelectorAll("#topics tbody tr")].find((r) => r.dataset.topic === t);
        return row && row.querySelector("td.messages").textContent.replace(/,/g, "") === n;
      },
      [topic, messages],
      { timeout: TIMEOUT_MS, polling: 200 },
    );
    const row = page.locator("#topics tbody tr").filter({ has: page.locator("td.name", { hasText: topic }) }).first();
    await row.click();
    await page.waitForSelector("#topic-detail:not([hidden]) #partitions tbody tr", { timeout: TIMEOUT_MS });
    const result = await page.evaluate((t) => ({
      topic: t,
      messages: document.querySelector(`#topics tbody tr[data-topic="${CSS.escape(t)}"] td.messages`).textContent,
      detail: document.getElementById("detail-name").textContent,
      partitions: [...document.querySelectorAll("#partitions tbody tr")].map((r) =>
        [...r.children].map((c) => c.textContent)),
      nodes: [...document.querySelectorAll("#nodes tbody tr")].map((r) => r.children[0].textContent),
      groups: [...document.querySelectorAll("#groups tbody tr")].map((r) => r.dataset.group),
      storage: [...document.querySelectorAll("#storage tbody tr")].map((r) => r.dataset.topic),
      title: document.title,
      summary: document.getElementById("summary").textContent,
    }), topic);
    await page.screenshot({ path: screenshot, fullPage: true });
    result.screenshot = screenshot;
    result.errors = errors;
    console.log(JSON.stringify(result));
  } catch (e) {
    console.error(`dashboard check failed: ${e.message}\npage errors: ${JSON.stringify(errors)}`);
    process.exitCode = 1;
  } finally {
    await browser.close();
  }
}

main().catch((e) => { console.error(e); process.exit(1); });
