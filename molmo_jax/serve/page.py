"""The demo page served at `/`: pick or drop an image, ask, watch the streamed answer and its points."""

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Molmo (JAX)</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
  body { font-family: system-ui, sans-serif; max-width: 900px; margin: 2em auto; padding: 0 1em;
         color: #222; }
  #drop { border: 2px dashed #999; border-radius: 8px; padding: 1em; text-align: center; cursor: pointer; }
  #drop.over { border-color: #06c; background: #eef5ff; }
  #view { position: relative; display: none; max-width: 100%; margin-top: .5em; }
  #view canvas { display: block; max-width: 100%; }
  #overlay { position: absolute; left: 0; top: 0; width: 100%; height: 100%; pointer-events: none; }
  #overlay circle { fill: rgba(255, 40, 120, 0.85); stroke: white; }
  textarea { width: 100%; box-sizing: border-box; font: inherit; }
  #answer { white-space: pre-wrap; background: #f6f6f6; padding: .8em; border-radius: 6px; min-height: 2em; }
  #meta { color: #666; font-size: .9em; }
  .err { color: #b00; }
  button { font: inherit; padding: .4em 1.2em; }
</style>
</head>
<body>
<h1>Molmo</h1>
<div id="drop">Drop an image here or click to choose one
  <input id="file" type="file" accept="image/*" hidden>
</div>
<div id="view"><canvas id="canvas"></canvas>
  <svg id="overlay" xmlns="http://www.w3.org/2000/svg" preserveAspectRatio="none"></svg></div>
<p><textarea id="prompt" rows="2" placeholder="Ask about the image, e.g. Point to the cat."
  >Describe this image.</textarea></p>
<p>max tokens <input id="max_tokens" type="number" value="200" min="1" style="width:5em">
   temperature <input id="temperature" type="number" value="0" min="0" max="2" step="0.1" style="width:4em">
   <button id="ask">Ask</button></p>
<div id="answer"></div>
<p id="meta"></p>
<script>
const drop = document.getElementById('drop'), fileInput = document.getElementById('file');
const canvas = document.getElementById('canvas'), ctx = canvas.getContext('2d');
const answer = document.getElementById('answer'), meta = document.getElementById('meta');
const view = document.getElementById('view'), overlay = document.getElementById('overlay');
const maxTokens = document.getElementById('max_tokens');
let dataUrl = null, img = null;

// Start from the server's own token limits, so that the default request is one it accepts.
fetch('/health').then(r => r.json()).then(h => {
  if (h.max_new_tokens) maxTokens.max = h.max_new_tokens;
  if (h.default_max_tokens) maxTokens.value = h.default_max_tokens;
}).catch(() => {});

drop.onclick = () => fileInput.click();
drop.ondragover = e => { e.preventDefault(); drop.classList.add('over'); };
drop.ondragleave = () => drop.classList.remove('over');
drop.ondrop = e => {
  e.preventDefault(); drop.classList.remove('over');
  if (e.dataTransfer.files[0]) load(e.dataTransfer.files[0]);
};
fileInput.onchange = () => { if (fileInput.files[0]) load(fileInput.files[0]); };

function load(file) {
  const reader = new FileReader();
  reader.onload = () => {
    dataUrl = reader.result;
    img = new Image();
    img.onload = () => draw([]);
    img.src = dataUrl;
  };
  reader.readAsDataURL(file);
}

// The image goes on the canvas; points are SVG circles over it, in image pixels (the viewBox), so
// they stay on their spot however the image is scaled.
function draw(points) {
  if (!img) return;
  const w = img.naturalWidth, h = img.naturalHeight;
  canvas.width = w; canvas.height = h;
  view.style.display = 'inline-block';
  ctx.drawImage(img, 0, 0);
  overlay.setAttribute('viewBox', `0 0 ${w} ${h}`);
  overlay.replaceChildren();
  const r = Math.max(4, Math.round(Math.min(w, h) / 60));
  for (const p of points) {
    const c = document.createElementNS('http://www.w3.org/2000/svg', 'circle');
    c.setAttribute('class', 'point');
    c.setAttribute('cx', p.x); c.setAttribute('cy', p.y); c.setAttribute('r', r);
    c.setAttribute('stroke-width', Math.max(1, r / 3));
    const title = document.createElementNS('http://www.w3.org/2000/svg', 'title');
    title.textContent = `(${p.x.toFixed(1)}, ${p.y.toFixed(1)})`;
    c.appendChild(title); overlay.appendChild(c);
  }
}

document.getElementById('ask').onclick = async () => {
  const content = [{type: 'text', text: document.getElementById('prompt').value}];
  if (dataUrl) content.push({type: 'image_url', image_url: {url: dataUrl}});
  const body = {
    messages: [{role: 'user', content}], stream: true,
    max_tokens: +maxTokens.value,
    temperature: +document.getElementById('temperature').value,
  };
  answer.textContent = ''; answer.classList.remove('err'); meta.textContent = 'waiting...';
  draw([]);
  const t0 = performance.now(); let tFirst = null;
  try {
    const resp = await fetch('/v1/chat/completions', {
      method: 'POST', headers: {'Content-Type': 'application/json'}, body: JSON.stringify(body)});
    if (!resp.ok) {
      const err = await resp.json().catch(() => ({error: {message: resp.statusText}}));
      throw new Error(resp.status + ': ' + err.error.message);
    }
    const reader = resp.body.getReader(), decoder = new TextDecoder();
    let buf = '';
    for (;;) {
      const {value, done} = await reader.read();
      if (done) break;
      buf += decoder.decode(value, {stream: true});
      let i;
      while ((i = buf.indexOf('\\n\\n')) >= 0) {
        const line = buf.slice(0, i).trim(); buf = buf.slice(i + 2);
        if (!line.startsWith('data:')) continue;
        const data = line.slice(5).trim();
        if (data === '[DONE]') continue;
        const msg = JSON.parse(data);
        if (msg.error) throw new Error(msg.error.message);
        const choice = msg.choices[0];
        if (choice.delta.content) {
          if (tFirst === null) tFirst = performance.now();
          answer.textContent += choice.delta.content;
        }
        if (choice.finish_reason) {
          draw(msg.points || []);
          const total = (performance.now() - t0) / 1000;
          meta.textContent = `latency ${total.toFixed(2)} s` +
            (tFirst !== null ? `, first token ${((tFirst - t0) / 1000).toFixed(2)} s` : '') +
            `, ${msg.usage.completion_tokens} tokens, batch of ${msg.timing.batch_size}` +
            `, ${(msg.points || []).length} point(s), finish: ${choice.finish_reason}`;
        }
      }
    }
  } catch (e) {
    answer.classList.add('err'); answer.textContent = String(e.message || e);
    meta.textContent = `failed after ${((performance.now() - t0) / 1000).toFixed(2)} s`;
  }
};
</script>
</body>
</html>
"""
