// A scripted exchange with Deriv's JS client (@deriv/deriv-api over the `ws` package), run by
// tests/integration. Usage: node js_client.cjs <ws origin> <control url>, e.g.
// node js_client.cjs ws://127.0.0.1:8765 http://127.0.0.1:8766/control
// Each step prints one JSON line ({"step": ...}); the test asserts on them. Any failure
// exits with status 1.
'use strict';

// DerivAPIBasic opens, and after a drop re-opens, its links with the global WebSocket.
globalThis.WebSocket = require('ws');
const DerivAPIBasic = require('@deriv/deriv-api/dist/DerivAPIBasic');

const APP_ID = 1089;
const SYMBOL = '1HZ100V';
const STEP_MS = 10000; // upper bound for any one step

function report(step, fields) {
  console.log(JSON.stringify({ step, ...fields }));
}

function within(promise, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: no answer within ${STEP_MS} ms`)), STEP_MS);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

function nextEvent(api, name) {
  return new Promise((resolve) => {
    const subscription = api.events.subscribe((event) => {
      if (event.name === name) {
        subscription.unsubscribe();
        resolve(event);
      }
    });
  });
}

async function exchange(endpoint, controlUrl) {
  const api = new DerivAPIBasic({ endpoint, app_id: APP_ID });
  const pong = await within(api.ping({ ping: 1 }), 'ping');
  report('ping', { ping: pong.ping });

  const ticks = [];
  const two = new Promise((resolve, reject) => {
    api.subscribe({ ticks: SYMBOL }).subscribe({
      next: (message) => {
        ticks.push(message);
        if (ticks.length === 2) resolve();
      },
      error: reject,
    });
  });
  await within(two, 'ticks');
  const subId = ticks[0].subscription.id;
  report('ticks', { epochs: ticks.slice(0, 2).map((t) => t.tick.epoch), symbol: ticks[0].tick.symbol, id: subId });
  const forgot = await within(api.forget(subId), 'forget');
  report('forget', { forget: forgot.forget });

  const history = await within(api.ticksHistory({ ticks_history: SYMBOL, end: 'latest', count: 5 }), 'ticks_history');
  report('ticks_history', { times: history.history.times, prices: history.history.prices });

  let refused = null;
  try {
    await within(api.ticksHistory({ ticks_history: 'R_12312312', end: 'latest' }), 'invalid symbol');
  } catch (response) {
    refused = response;
  }
  if (!refused || !refused.error) throw new Error(`an unknown symbol was accepted: ${JSON.stringify(refused)}`);
  report('invalid_symbol', { code: refused.error.code, message: refused.error.message });

  // The server drops every link; the client reconnects by itself.
  const closed = nextEvent(api, 'close');
  const reopened = closed.then(() => nextEvent(api, 'open'));
  const dropped = await fetch(`${controlUrl}/drop_all`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ code: 1012, reason: 'restart' }),
  });
  if (!(await dropped.json()).ok) throw new Error('drop_all was refused');
  await within(closed, 'close');
  report('dropped', {});
  await within(reopened, 'reconnect');
  const again = await within(api.ping({ ping: 1 }), 'ping after reconnect');
  report('reconnected', { ping: again.ping });
  api.disconnect();
}

exchange(process.argv[2], process.argv[3]).then(
  () => process.exit(0), // the client's keep-alive timer would hold the process open
  (error) => {
    console.error(error && error.stack ? error.stack : JSON.stringify(error));
    process.exit(1);
  },
);
