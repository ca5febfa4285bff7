// Drives the example web chat in headless Chromium (playwright-core, Debian's /usr/bin/chromium).
//
//   node test/browser-chat.mjs PAGE_URL SCREENSHOT_PATH HISTORY_TEXT
//
// Two users, each in a browser context of their own, log in through the page
// at PAGE_URL (its ?server= names the gRPC-Web proxy) and join #chat, whose
// history holds HISTORY_TEXT. A message typed by one appears on the other's
// page; each sees the other as present. Then the script prints
// {"step":"restart"} and waits for a line on its standard input: meanwhile
// the server is restarted. Both pages must say they reconnected, and
// messages typed after the restart must arrive both ways. The page is
// screenshotted (900x600) to SCREENSHOT_PATH, and the script prints
// {"step":"done"}. Any failure exits 1 with the reason on stderr.

import { createInterface } from "node:readline";
import { chromium } from "playwright-core";

const [pageUrl, screenshotPath, historyText] = process.argv.slice(2);
const WAIT_MS = 15_000;
const RECONNECT_WAIT_MS = 30_000;

// Playwright already passes --no-sandbox (needed as root), --disable-background-networking,
// --disable-component-update, --no-first-run, --disable-default-apps, --metrics-recording-only,
// --no-default-browser-check, --disable-dev-shm-usage and --disable-extensions; these add the rest.
const OFFLINE_FLAGS = [
  "--disable-sync",
  "--disable-domain-reliability",
  "--disable-client-side-phishing-detection",
  "--disable-crash-reporter",
  "--no-pings",
  // Every host name fails to resolve: the pages use 127.0.0.1 alone, and Chromium's own services stay unreachable.
  "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
];

const say = (value) => console.log(JSON.stringify(value));

async function openChat(browser, username) {
  const context = await browser.newContext({ viewport: { width: 900, height: 600 } });
  const page = await context.newPage();
  page.setDefaultTimeout(WAIT_MS);
  page.on("pageerror", (error) => console.error(`[${username}] page error: ${error.message}`));
  page.on("console", (message) => {
    if (message.type() === "error") console.error(`[${username}] console: ${message.text()}`);
  });
  await page.goto(pageUrl);
  await page.fill("#username", username);
  await page.click("#login button[type=submit]");
  await page.click('button.room-link[data-room="chat"]');
  await messageShown(page, historyText);
  await page.locator("#state", { hasText: "connected" }).waitFor();
  return page;
}

function messageShown(page, text, timeout = WAIT_MS) {
  return page.locator("#messages li.message .text", { hasText: text }).first().waitFor({ timeout });
}

function noticeShown(page, text, timeout = WAIT_MS) {
  return page.locator("#messages li.notice", { hasText: text }).first().waitFor({ timeout });
}

function presentShown(page, username) {
  return page.locator("#people li", { hasText: username }).waitFor();
}

async function send(page, text) {
  await page.fill("#message", text);
  await page.press("#message", "Enter");
}

async function nextInputLine() {
  const lines = createInterface({ input: process.stdin });
  for await (const line of lines) {
    lines.close();
    return line;
  }
  throw new Error("standard input ended before the restart was done");
}

async function run(browser) {
  const alice = await openChat(browser, "alice");
  const bob = await openChat(browser, "bob");
  await presentShown(alice, "bob");
  await presentShown(bob, "alice");
  await noticeShown(alice, "bob joined");

  await send(alice, "hello bob, from alice's page");
  await messageShown(bob, "hello bob, from alice's page");
  await send(bob, "hi alice");
  await messageShown(alice, "hi alice");

  say({ step: "restart" });
  await nextInputLine();
  await noticeShown(alice, "Reconnected", RECONNECT_WAIT_MS);
  await noticeShown(bob, "Reconnected", RECONNECT_WAIT_MS);
  await alice.locator("#state", { hasText: "connected" }).waitFor();

  await send(bob, "still here after the restart");
  await messageShown(alice, "still here after the restart");
  await send(alice, "so am I");
  await messageShown(bob, "so am I");
  await presentShown(alice, "bob");
  await presentShown(bob, "alice");

  const aliceLines = await alice.locator("#messages li.message .text").allTextContents();
  say({ step: "lines", alice: aliceLines });
  await alice.screenshot({ path: screenshotPath });
  say({ step: "done" });
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  headless: true,
  args: OFFLINE_FLAGS,
});
try {
  await run(browser);
} catch (error) {
  console.error(error instanceof Error ? (error.stack ?? error.message) : String(error));
  process.exitCode = 1;
} finally {
  await browser.close();
}
