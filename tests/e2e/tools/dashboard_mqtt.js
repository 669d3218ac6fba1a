// Drives the admin dashboard's MQTT page in headless Chromium (playwright-core, the system's
// /usr/bin/chromium) for t97: opens URL#mqtt through the nav link, waits until the clients
// table lists CLIENT_ID as connected, and writes a screenshot.
//
// usage: node dashboard_mqtt.js URL CLIENT_ID SCREENSHOT.png
// Prints one JSON line: {rows, summary, nav, overview_hidden, title, errors, screenshot}.
// Exit 1 with the reason on stderr when the page does not show it within the timeout.
"use strict";

const { chromium } = require("playwright-core");

const TIMEOUT_MS = 30000;

async function main() {
  const [url, clientId, screenshot] = process.argv.slice(2);
  if (!url || !clientId || !screenshot) {
    console.error("usage: node dashboard_mqtt.js URL CLIENT_ID SCREENSHOT.png");
    process.exit(2);
  }
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ["--headless", "--no-sandbox", "--disable-gpu"],
  });
  const errors = [];
  try {
    const page = await browser.newPage({ viewport: { width: 1400, height: 700 } });
    page.on("pageerror", (e) => errors.push(String(e)));
    page.on("console", (m) => { if (m.type() === "error") errors.push(m.text()); });
    await page.goto(url, { waitUntil: "load", timeout: TIMEOUT_MS });
    await page.click("nav a[data-view=mqtt]");
    await page.waitForSelector("#view-mqtt:not([hidden])", { timeout: TIMEOUT_MS });
    await page.waitForFunction(
      (id) => [...document.querySelectorAll("#mqtt-clients tbody tr")].some(
        (r) => r.dataset.client === id && r.children[1].textContent === "connected"),
      clientId,
      { timeout: TIMEOUT_MS, polling: 200 },
    );
    const result = await page.evaluate(() => ({
      rows: [...document.querySelectorAll("#mqtt-clients tbody tr")].map((r) =>
        [...r.children].map((c) => c.textContent)),
      summary: document.getElementById("mqtt-summary").textContent,
      nav: [...document.querySelectorAll("nav a")].map((a) => a.textContent),
      active: document.querySelector("nav a.active").textContent,
      overview_hidden: document.getElementById("view-overview").hidden,
      hash: location.hash,
      title: document.title,
    }));
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
