// The review page: a grid of samples with filters, and a sample view whose verdict chips a
// click (or keys 1-9) toggles. Every change goes to the server at once; nothing is kept here.

const TOKEN = document.querySelector('meta[name="review-token"]').content;
const PAGE_SIZE = 60;
const $ = (id) => document.getElementById(id);

const state = {
  run: null,          // /api/run
  params: new URLSearchParams(),  // the grid's filters and sort
  offset: 0,
  page: null,         // the grid page last loaded: {total, offset, limit, items}
  sample: null,       // the sample shown: /api/samples/{i}
  labels: null,       // its cluster label map {height, width, labels}
  original: null,     // its original image, for the outlines
  highlight: null,    // colour highlighted in the outlines
  maskVersion: 0,
  ticket: 0,          // the latest navigation: answers to older ones are dropped
};

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === 'class') node.className = v;
    else if (k === 'dataset') Object.assign(node.dataset, v);
    else if (v !== null && v !== undefined && v !== false) node.setAttribute(k, v);
  }
  for (const child of children) if (child !== null) node.append(child);
  return node;
}

function say(text, ok = false) {
  const box = $('message');
  box.textContent = text;
  box.classList.toggle('ok', ok);
}

async function api(path, body) {
  const options = body === undefined ? {} : {
    method: 'POST',
    headers: {'Content-Type': 'application/json', 'X-Review-Token': TOKEN},
    body: JSON.stringify(body),
  };
  const response = await fetch(path, options);
  const data = await response.json().catch(() => ({error: response.statusText}));
  if (!response.ok) throw new Error(data.error || `HTTP ${response.status}`);
  return data;
}

const pct = (x) => (x === null || x === undefined ? '–' : `${(100 * x).toFixed(1)}%`);

// --- routing: #grid?filters&offset=N or #sample/INDEX?filters&offset=N -------------------

function readHash() {
  const hash = location.hash.slice(1);
  const [route, query = ''] = hash.split('?');
  const params = new URLSearchParams(query);
  state.offset = Math.max(0, parseInt(params.get('offset') || '0', 10) || 0);
  params.delete('offset');
  state.params = params;
  const match = route.match(/^sample\/(\d+)$/);
  return match ? {view: 'sample', index: parseInt(match[1], 10)} : {view: 'grid'};
}

function hashFor(view, index = null) {
  const params = new URLSearchParams(state.params);
  if (state.offset) params.set('offset', String(state.offset));
  const query = params.toString();
  return `#${view === 'sample' ? `sample/${index}` : 'grid'}${query ? `?${query}` : ''}`;
}

async function route() {
  const where = readHash();
  document.body.dataset.ready = 'loading';
  syncForm();
  try {
    if (where.view === 'sample') await showSample(where.index);
    else await showGrid();
  } catch (error) {
    say(error.message);
  }
}

// --- grid ---------------------------------------------------------------------------------

function syncForm() {
  const form = $('filters');
  for (const input of form.elements) {
    if (!input.name) continue;
    const value = state.params.get(input.name) || '';
    if (input.type === 'checkbox') input.checked = value === '1';
    else if (input.tagName === 'SELECT') input.value = value || input.options[0].value;
    else input.value = value;
  }
}

function formParams() {
  const params = new URLSearchParams();
  for (const input of $('filters').elements) {
    if (!input.name) continue;
    if (input.type === 'checkbox') { if (input.checked) params.set(input.name, '1'); }
    else if (input.value !== '') params.set(input.name, input.value);
  }
  return params;
}

async function loadPage(offset) {
  const params = new URLSearchParams(state.params);
  params.set('offset', String(offset));
  params.set('limit', String(PAGE_SIZE));
  return api(`/api/samples?${params}`);
}

function keep(page) {
  state.page = page;
  state.offset = page.offset;
  return page;
}

function cardFor(item) {
  const src = `/api/samples/${item.index}/image/overlay?g=${item.generation}`;
  const img = !item.has_images
    ? el('div', {class: 'noimage'}, 'no image')
    : el('img', {src, alt: `sample ${item.index}`, loading: 'lazy', decoding: 'async',
                 width: 120, height: 120});
  const badges = el('div');
  if (item.status !== 'ok') badges.append(el('span', {class: `badge ${item.status}`}, item.status));
  if (item.overrides) badges.append(el('span', {class: 'badge reviewed'}, `${item.overrides} overridden`));
  if (item.min_agreement !== null && item.min_agreement < 1) badges.append(el('span', {class: 'badge'}, 'critic unsure'));
  if (item.truth_mismatch) badges.append(el('span', {class: 'badge'}, `${item.truth_mismatch} vs truth`));
  if (item.has_note) badges.append(el('span', {class: 'badge'}, 'note'));
  const predicted = item.prediction_name === null ? '' : ` → ${item.prediction_name}`;
  return el('a', {class: 'card', href: hashFor('sample', item.index), dataset: {index: item.index}},
    img,
    el('div', {class: 'line'}, el('b', {}, `#${item.index}`),
       el('span', {}, item.confidence === null ? '' : pct(item.confidence))),
    el('div', {class: 'line'}, el('span', {}, `${item.class_name}${predicted}`),
       el('span', {title: 'masked share (effective)'}, pct(item.effective_masked))),
    badges);
}

function renderPager(page) {
  const pager = $('pager');
  pager.replaceChildren();
  const last = Math.max(0, Math.ceil(page.total / PAGE_SIZE) - 1);
  const current = Math.floor(page.offset / PAGE_SIZE);
  const go = (n) => { state.offset = n * PAGE_SIZE; location.hash = hashFor('grid'); };
  const prev = el('button', {type: 'button', id: 'page-prev', disabled: current === 0 ? '' : null}, 'Previous page');
  const next = el('button', {type: 'button', id: 'page-next', disabled: current >= last ? '' : null}, 'Next page');
  prev.addEventListener('click', () => go(current - 1));
  next.addEventListener('click', () => go(current + 1));
  pager.append(prev, el('span', {id: 'page-info'},
    `page ${current + 1} of ${last + 1} · ${page.total} samples`), next);
}

async function showGrid() {
  const ticket = ++state.ticket;
  const page = await loadPage(state.offset);
  if (ticket !== state.ticket) return;  // a newer filter or page was asked for meanwhile
  keep(page);
  $('sample-view').hidden = true;
  $('grid-view').hidden = false;
  renderPager(page);
  $('grid').replaceChildren(...page.items.map(cardFor));
  document.body.dataset.ready = 'grid';
  performance.mark('grid-ready');
}

// --- sample view --------------------------------------------------------------------------

async function showSample(index) {
  const ticket = ++state.ticket;
  const needPage = !state.page || state.page.offset !== state.offset;
  const [page, sample, labels] = await Promise.all([
    needPage ? loadPage(state.offset) : state.page,
    api(`/api/samples/${index}`),
    api(`/api/samples/${index}/labels`).catch(() => null),
  ]);
  if (ticket !== state.ticket) return;  // the reviewer moved on meanwhile
  keep(page);
  $('grid-view').hidden = true;
  $('sample-view').hidden = false;
  state.sample = sample;
  state.labels = labels;
  state.highlight = null;
  const g = sample.generation;
  const has = (name) => sample.images.includes(name);
  $('img-original').src = has('original') ? `/api/samples/${index}/image/original?g=${g}` : '';
  $('img-clusters').src = has('clusters') ? `/api/samples/${index}/image/clusters?g=${g}` : '';
  $('img-overlay').src = has('overlay') ? `/api/samples/${index}/image/overlay?g=${g}` : '';
  $('img-attribution').src = has('attribution') ? `/api/samples/${index}/image/attribution` : '';
  const bound = sample.attribution_bound;
  $('attr-low').textContent = bound === null ? '' : (-bound).toPrecision(2);
  $('attr-high').textContent = bound === null ? '' : bound.toPrecision(2);
  const predicted = sample.prediction_name === null ? '' : `, predicted ${sample.prediction_name}`;
  const confidence = sample.confidence === null ? '' : ` (${pct(sample.confidence)})`;
  $('sample-title').textContent =
    `#${index} · class ${sample.class_name}${predicted}${confidence} · ${sample.status}`;
  $('critique').textContent = sample.critique || sample.error || '(no critique)';
  $('note').value = sample.note || '';
  state.original = null;
  if (has('original')) {
    const img = new Image();
    img.onload = () => { state.original = img; drawOutlines(); };
    img.src = $('img-original').src;
  }
  renderVerdicts();
  document.body.dataset.ready = `sample:${index}`;
  performance.mark('sample-ready');
}

function renderVerdicts() {
  const s = state.sample;
  state.maskVersion += 1;
  $('img-mask').src = s.effective_verdicts
    ? `/api/samples/${s.index}/image/effective?v=${state.maskVersion}` : '';
  const chips = s.colors.map((color, k) => {
    const verdict = s.effective_verdicts ? s.effective_verdicts[color] : null;
    const overridden = color in (s.overridden || {});
    const extra = [];
    if (overridden) extra.push(`critic: ${s.verdicts[color] ? 'yes' : 'no'}`);
    if (s.agreement && s.agreement[color] < 1) extra.push(`sure ${pct(s.agreement[color])}`);
    if (s.spurious_colors) extra.push(s.spurious_colors.includes(color) ? 'truth: spurious' : 'truth: relevant');
    const chip = el('button', {
      type: 'button', class: 'chip', disabled: verdict === null ? '' : null,
      'aria-pressed': verdict === null ? null : String(!verdict),
      title: `cluster ${k + 1} (${color}): click or press ${k + 1} to toggle`,
      dataset: {color, verdict: verdict === null ? 'none' : (verdict ? 'yes' : 'no'),
                overridden: String(overridden), key: String(k + 1)},
    },
    el('span', {class: 'num'}, String(k + 1)),
    el('span', {class: 'swatch'}),
    el('span', {}, color),
    el('span', {class: 'verdict'}, verdict === null ? '–' : (verdict ? 'yes' : 'no')),
    extra.length ? el('span', {class: 'extra'}, extra.join(' · ')) : null);
    chip.querySelector('.swatch').style.background = state.run.palette[color];
    chip.addEventListener('click', () => toggle(color));
    chip.addEventListener('mouseenter', () => { state.highlight = color; drawOutlines(); });
    chip.addEventListener('mouseleave', () => { state.highlight = null; drawOutlines(); });
    return chip;
  });
  $('chips').replaceChildren(...chips);
  $('audit').replaceChildren(...s.audit.map((e) => el('li', {}, auditText(e))));
  drawOutlines();
}

function auditText(e) {
  const who = e.reviewer ? ` by ${e.reviewer}` : '';
  const when = e.at.replace('T', ' ').slice(0, 19);
  if (e.kind === 'note') return `${when}: note set${who}`;
  if (e.kind === 'reset') return `${when}: override of ${e.color} dropped (${e.note})`;
  const yn = (v) => (v ? 'yes' : 'no');
  return `${when}: ${e.color} ${yn(e.old_verdict)} → ${yn(e.new_verdict)}${who}${e.note ? ` (${e.note})` : ''}`;
}

let pending = Promise.resolve();

function toggle(color) {
  // one request at a time, in order: fast key presses never race each other
  pending = pending.then(async () => {
    const s = state.sample;
    if (!s || !s.effective_verdicts || !(color in s.effective_verdicts)) return;
    try {
      const saved = await api(`/api/samples/${s.index}/verdict`,
                              {color, verdict: !s.effective_verdicts[color]});
      say(`saved: #${s.index} ${color} is now "${saved.effective_verdicts[color] ? 'yes' : 'no'}"`, true);
      if (state.sample?.index !== s.index) return;  // moved on: the saved state shows on return
      state.sample = saved;
      renderVerdicts();
    } catch (error) {
      say(`not saved: ${error.message}`);
    }
  });
  return pending;
}

function drawOutlines() {
  const canvas = $('outlines');
  const s = state.sample;
  const lab = state.labels;
  if (!s || !lab) { canvas.width = 1; canvas.height = 1; return; }
  const {height: h, width: w, labels} = lab;
  const scale = Math.max(1, Math.floor(336 / Math.max(h, w)));
  canvas.width = w * scale;
  canvas.height = h * scale;
  const ctx = canvas.getContext('2d');
  ctx.imageSmoothingEnabled = false;
  ctx.fillStyle = '#000';
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  if (state.original) {
    ctx.globalAlpha = 0.75;
    ctx.drawImage(state.original, 0, 0, canvas.width, canvas.height);
    ctx.globalAlpha = 1;
  }
  s.colors.forEach((color, k) => drawCluster(ctx, s, color, s.cluster_ids[k], k + 1, scale));
}

function drawCluster(ctx, s, color, id, number, scale) {
  const {height: h, width: w, labels} = state.labels;
  const at = (r, c) => (r < 0 || c < 0 || r >= h || c >= w ? -2 : labels[r * w + c]);
  const edges = new Path2D();
  const hatch = new Path2D();
  let sr = 0, sc = 0, n = 0;
  for (let r = 0; r < h; r++) {
    for (let c = 0; c < w; c++) {
      if (at(r, c) !== id) continue;
      sr += r; sc += c; n += 1;
      const x = c * scale, y = r * scale;
      if (at(r - 1, c) !== id) { edges.moveTo(x, y); edges.lineTo(x + scale, y); }
      if (at(r + 1, c) !== id) { edges.moveTo(x, y + scale); edges.lineTo(x + scale, y + scale); }
      if (at(r, c - 1) !== id) { edges.moveTo(x, y); edges.lineTo(x, y + scale); }
      if (at(r, c + 1) !== id) { edges.moveTo(x + scale, y); edges.lineTo(x + scale, y + scale); }
      hatch.moveTo(x, y + scale); hatch.lineTo(x + scale, y);
    }
  }
  if (!n) return;
  const rejected = s.effective_verdicts && s.effective_verdicts[color] === false;
  const strong = state.highlight === color;
  const paint = state.run.palette[color];
  if (rejected) {
    ctx.lineWidth = Math.max(1, scale / 4);
    ctx.strokeStyle = paint;
    ctx.stroke(hatch);
  }
  ctx.lineWidth = strong ? 6 : 4;
  ctx.strokeStyle = '#000';
  ctx.stroke(edges);
  ctx.lineWidth = strong ? 3.5 : 2;
  ctx.strokeStyle = paint;
  ctx.stroke(edges);
  // the number sits on the cluster's pixel nearest its centroid
  const cr = sr / n, cc = sc / n;
  let best = null;
  for (let r = 0; r < h; r++) for (let c = 0; c < w; c++) {
    if (at(r, c) !== id) continue;
    const d = (r - cr) ** 2 + (c - cc) ** 2;
    if (!best || d < best.d) best = {r, c, d};
  }
  const x = (best.c + 0.5) * scale, y = (best.r + 0.5) * scale;
  ctx.beginPath();
  ctx.arc(x, y, 9, 0, 2 * Math.PI);
  ctx.fillStyle = '#fff';
  ctx.fill();
  ctx.lineWidth = 2;
  ctx.strokeStyle = '#000';
  ctx.stroke();
  ctx.fillStyle = '#000';
  ctx.font = 'bold 12px system-ui, sans-serif';
  ctx.textAlign = 'center';
  ctx.textBaseline = 'middle';
  ctx.fillText(String(number), x, y + 0.5);
}

async function step(delta) {
  const items = state.page ? state.page.items : [];
  const at = items.findIndex((item) => item.index === state.sample?.index);
  let target = at + delta;
  if (at >= 0 && target >= 0 && target < items.length) {
    location.hash = hashFor('sample', items[target].index);
    return;
  }
  const offset = state.offset + (delta > 0 ? PAGE_SIZE : -PAGE_SIZE);
  if (offset < 0 || offset >= (state.page?.total ?? 0)) { say('no more samples this way'); return; }
  const page = keep(await loadPage(offset));
  target = delta > 0 ? 0 : page.items.length - 1;
  if (page.items[target]) location.hash = hashFor('sample', page.items[target].index);
}

async function saveNote() {
  const s = state.sample;
  const text = $('note').value;
  if (!s || text === (s.note || '')) return;
  try {
    const saved = await api(`/api/samples/${s.index}/note`, {note: text});
    say(`note of #${s.index} saved`, true);
    if (state.sample?.index !== s.index) return;
    state.sample = saved;
    renderVerdicts();
  } catch (error) {
    say(`note not saved: ${error.message}`);
  }
}

// --- summary, export, re-align ------------------------------------------------------------

async function showSummary() {
  const box = $('summary');
  const open = box.hidden;
  box.hidden = !open;
  $('summary-toggle').setAttribute('aria-expanded', String(open));
  if (!open) return;
  const s = await api('/api/summary');
  const rows = [
    ['samples', s.total], ['ok', s.by_status.ok], ['failed', s.by_status.failed],
    ['not run', s.by_status.not_run], ['samples overridden', s.overridden_samples],
    ['clusters overridden', s.overridden_clusters], ['notes', s.notes],
    ['audit entries', s.audit_entries], ['provider calls', s.provider_calls],
    ['cost (USD)', s.cost_usd.toFixed(4)],
  ];
  if (s.truth_samples) {
    rows.push(['accuracy vs truth: critic', pct(s.critic_accuracy)],
              ['accuracy vs truth: reviewed', pct(s.reviewed_accuracy)],
              ['spurious judged "no": critic', pct(s.critic_spurious_recall)],
              ['spurious judged "no": reviewed', pct(s.reviewed_spurious_recall)]);
  }
  box.replaceChildren(...rows.map(([k, v]) => el('div', {}, `${k}: `, el('span', {}, String(v)))));
}

function dialog(title, text, run = null) {
  $('dialog-title').textContent = title;
  $('dialog-text').textContent = text;
  const button = $('dialog-run');
  button.hidden = !run;
  button.onclick = run;
  $('dialog').showModal();
}

async function exportRun() {
  say('exporting…', true);
  try {
    const r = await api('/api/export', {});
    say(`exported ${r.count} samples`, true);
    dialog('Exported reviewed verdicts and masks',
           `${r.count} samples\nverdicts: ${r.verdicts}\nmasks:    ${r.masks}\nindices:  ${r.indices}`);
  } catch (error) {
    say(`export failed: ${error.message}`);
  }
}

function realign() {
  const info = state.run.realign;
  const text = `Run this to align the model with the reviewed verdicts:\n\n${info.command}`;
  const run = info.wired ? async () => {
    $('dialog').close();
    say('re-aligning from the reviewed verdicts…', true);
    try { say((await api('/api/realign', {})).message, true); } catch (e) { say(e.message); }
  } : null;
  dialog('Re-align with these overrides', text, run);
}

// --- start --------------------------------------------------------------------------------

function fillClassSelects(names) {
  for (const name of ['label', 'prediction']) {
    const select = $('filters').elements[name];
    names.forEach((n, i) => select.append(el('option', {value: String(i)}, n)));
  }
}

function paintScales(scales) {
  $('scale-attribution').style.background = `linear-gradient(to right, ${scales.attribution.join(', ')})`;
  $('scale-mask').style.background = `linear-gradient(to right, ${scales.mask.join(', ')})`;
}

function onKey(event) {
  if ($('sample-view').hidden || event.ctrlKey || event.metaKey || event.altKey) return;
  if (['INPUT', 'TEXTAREA', 'SELECT'].includes(event.target.tagName)) {
    if (event.key === 'Escape') event.target.blur();
    return;
  }
  if ($('dialog').open) return;
  const key = event.key;
  if (key === 'j' || key === 'ArrowRight') step(1);
  else if (key === 'k' || key === 'ArrowLeft') step(-1);
  else if (key === 'Escape') location.hash = hashFor('grid');
  else if (key === 'n') { event.preventDefault(); $('note').focus(); }
  else if (/^[1-9]$/.test(key)) {
    const color = state.sample?.colors[parseInt(key, 10) - 1];
    if (color) toggle(color);
  } else return;
  event.preventDefault();
}

async function start() {
  state.run = await api('/api/run');
  $('run-title').textContent =
    `${state.run.dataset} / ${state.run.split} · ${state.run.masks} masks · run ${state.run.run_id}`;
  $('truth-filter').hidden = !state.run.has_truth;
  fillClassSelects(state.run.class_names);
  paintScales(state.run.scales);
  $('filters').addEventListener('change', () => {
    state.params = formParams();
    state.offset = 0;
    location.hash = hashFor('grid');
  });
  $('filters').addEventListener('submit', (e) => e.preventDefault());
  $('back').addEventListener('click', () => { location.hash = hashFor('grid'); });
  $('prev').addEventListener('click', () => step(-1));
  $('next').addEventListener('click', () => step(1));
  $('note').addEventListener('blur', saveNote);
  $('summary-toggle').addEventListener('click', () => showSummary().catch((e) => say(e.message)));
  $('export').addEventListener('click', exportRun);
  $('realign').addEventListener('click', realign);
  $('dialog-close').addEventListener('click', () => $('dialog').close());
  document.addEventListener('keydown', onKey);
  window.addEventListener('hashchange', route);
  await route();
}

start().catch((error) => say(`cannot load the run: ${error.message}`));
