// The reading room's film viewer (a Streamlit v2 component): the film on a canvas with window/level applied in
// the browser, the Grad-CAM map over it with its colour scale in a corner (it takes no width: the film never
// moves when the overlay toggles). Zoom, pan, window/level and invert are kept per study in this module, which
// the page loads once, so a Streamlit rerun (any control of the page) leaves the reader's view as it was.
//
// Mouse: wheel zooms about the pointer, drag pans, right-drag or shift-drag sets the window (horizontal: width,
// vertical: level), double-click resets. Keys: ↓/j next study, ↑/k previous, 1-3 presets, i invert, o overlay,
// f full screen, r reset.

const views = new Map(); // study id → {zoom, cx, cy, level, width, invert}
const shared = { overlay: true, preset: "full range" }; // the reader's choices that follow from study to study
const ZOOM_LIMITS = [0.5, 40];
const WINDOW_PX = 0.5; // grey levels per pixel dragged
let activeViewer = null; // the viewer the keyboard drives
let keyListener = null;

export default function (component) {
  const { data, parentElement, setTriggerValue } = component;
  let root = parentElement.querySelector(".cxr-viewer");
  if (!root) {
    root = document.createElement("div");
    root.className = "cxr-viewer";
    root.tabIndex = 0;
    parentElement.appendChild(root);
    root.viewer = new FilmViewer(root);
  }
  root.viewer.show(data, setTriggerValue);
  activeViewer = root.viewer;
  if (keyListener) document.removeEventListener("keydown", keyListener);
  keyListener = (event) => activeViewer && activeViewer.key(event);
  document.addEventListener("keydown", keyListener);
  window.removeEventListener("beforeunload", warnBeforeLeaving);
  window.addEventListener("beforeunload", warnBeforeLeaving);
}

// The session's studies live in the server's memory for this tab only: a reload or a closed tab loses them, so
// the browser asks first while a film is open.
function warnBeforeLeaving(event) {
  if (activeViewer && activeViewer.root.isConnected) {
    event.preventDefault();
    event.returnValue = "";
  }
}

// Whether the focused element uses the keys itself: text fields, sliders, menus, the worklist's grid.
function ownsKeys(target) {
  if (!target || !target.closest) return false;
  if (target.isContentEditable || /^(TEXTAREA|SELECT)$/.test(target.tagName)) return true;
  if (target.tagName === "INPUT" && !["radio", "checkbox", "button", "submit"].includes(target.type)) return true;
  return Boolean(target.closest('[role="slider"], [role="grid"], [role="combobox"], [role="listbox"], [role="menu"]'));
}

class FilmViewer {
  constructor(root) {
    this.root = root;
    root.innerHTML = `
      <canvas class="cxr-viewer-canvas"></canvas>
      <div class="cxr-viewer-title"></div>
      <div class="cxr-viewer-toolbar"></div>
      <div class="cxr-viewer-readout"></div>
      <div class="cxr-viewer-colorbar"><div class="cxr-viewer-colorbar-title"></div>
        <div class="cxr-viewer-colorbar-body"><div class="cxr-viewer-gradient"></div>
        <div class="cxr-viewer-ticks"><span>1.0</span><span>0.5</span><span>0.0</span></div></div></div>
      <div class="cxr-viewer-help">wheel zoom · drag pan · right- or shift-drag window · dbl-click reset ·
        ↑↓ study · 1–3 presets · i invert · o overlay · f full screen</div>`;
    this.canvas = root.querySelector("canvas");
    this.film = document.createElement("canvas"); // the windowed film at its own resolution
    this.grey = null; // the film's grey levels (one byte a pixel), from the served image
    this.overlay = null; // the colour map image (transparent where not drawn)
    this.pointer = null;
    new ResizeObserver(() => this.draw()).observe(root); // full screen in and out resizes the root too
    this.listen();
  }

  show(data, setTriggerValue) {
    this.setTriggerValue = setTriggerValue;
    const studyChanged = !this.data || this.data.id !== data.id;
    const filmChanged = !this.data || this.data.film !== data.film;
    const overlayChanged = !this.data || JSON.stringify(this.data.overlay) !== JSON.stringify(data.overlay);
    this.data = data;
    if (!views.has(data.id)) {
      const [level, width] = data.presets[shared.preset] || data.presets["full range"];
      views.set(data.id, { zoom: 1, cx: data.width / 2, cy: data.height / 2, level, width, invert: false });
    }
    this.view = views.get(data.id);
    this.root.querySelector(".cxr-viewer-title").textContent = data.title;
    this.toolbar();
    if (filmChanged) this.loadFilm(data.film);
    if (overlayChanged) this.loadOverlay(data.overlay);
    this.draw();
    if (studyChanged) this.root.scrollIntoView({ block: "nearest" }); // a study opened: its film in sight
  }

  loadFilm(source) {
    this.grey = null;
    const image = new Image();
    image.onload = () => {
      if (this.data.film !== source) return; // a newer film was asked for meanwhile
      const scratch = document.createElement("canvas");
      scratch.width = image.naturalWidth;
      scratch.height = image.naturalHeight;
      const context = scratch.getContext("2d", { willReadFrequently: true });
      context.drawImage(image, 0, 0);
      const rgba = context.getImageData(0, 0, scratch.width, scratch.height);
      this.grey = new Uint8Array(rgba.data.length / 4);
      for (let i = 0; i < this.grey.length; i++) this.grey[i] = rgba.data[4 * i];
      this.film.width = scratch.width;
      this.film.height = scratch.height;
      this.filmPixels = rgba;
      this.applyWindow();
    };
    image.src = source;
  }

  loadOverlay(overlay) {
    const colorbar = this.root.querySelector(".cxr-viewer-colorbar");
    if (!overlay) {
      this.overlay = null;
      colorbar.hidden = true;
      return;
    }
    colorbar.querySelector(".cxr-viewer-gradient").style.background = overlay.gradient;
    colorbar.querySelector(".cxr-viewer-colorbar-title").textContent = overlay.caption;
    const image = new Image();
    image.onload = () => {
      this.overlay = image;
      this.draw();
    };
    image.src = overlay.image;
  }

  // The window as a lookup table over the film's grey levels, written into the film canvas.
  applyWindow() {
    if (!this.grey) return;
    const { level, width, invert } = this.view;
    const low = level - width / 2;
    const table = new Uint8ClampedArray(256);
    for (let g = 0; g < 256; g++) {
      const shown = ((g - low) * 255) / Math.max(width, 1);
      table[g] = invert ? 255 - shown : shown;
    }
    const pixels = this.filmPixels.data;
    for (let i = 0; i < this.grey.length; i++) {
      const value = table[this.grey[i]];
      pixels[4 * i] = pixels[4 * i + 1] = pixels[4 * i + 2] = value;
      pixels[4 * i + 3] = 255;
    }
    this.film.getContext("2d").putImageData(this.filmPixels, 0, 0);
    this.windowKey = `${level},${width},${invert}`;
    this.draw();
  }

  // Film coordinates (display pixels of the study) → canvas pixels: scale and offset.
  transform() {
    const { clientWidth: w, clientHeight: h } = this.canvas;
    const fit = Math.min(w / this.data.width, h / this.data.height);
    const scale = fit * this.view.zoom;
    return { scale, x: w / 2 - this.view.cx * scale, y: h / 2 - this.view.cy * scale, w, h };
  }

  draw() {
    if (!this.data) return;
    const ratio = window.devicePixelRatio || 1;
    const { clientWidth: w, clientHeight: h } = this.canvas;
    if (this.canvas.width !== Math.round(w * ratio) || this.canvas.height !== Math.round(h * ratio)) {
      this.canvas.width = Math.round(w * ratio);
      this.canvas.height = Math.round(h * ratio);
    }
    if (this.grey && this.windowKey !== `${this.view.level},${this.view.width},${this.view.invert}`) {
      this.applyWindow();
      return;
    }
    const context = this.canvas.getContext("2d");
    context.setTransform(1, 0, 0, 1, 0, 0);
    context.fillStyle = "#111111";
    context.fillRect(0, 0, this.canvas.width, this.canvas.height);
    const t = this.transform();
    context.setTransform(t.scale * ratio, 0, 0, t.scale * ratio, t.x * ratio, t.y * ratio);
    context.imageSmoothingEnabled = true;
    if (this.grey) context.drawImage(this.film, 0, 0, this.data.width, this.data.height);
    const showOverlay = shared.overlay && this.overlay && this.data.overlay;
    if (showOverlay) {
      context.globalAlpha = this.data.overlay.opacity;
      context.drawImage(this.overlay, 0, 0, this.data.width, this.data.height);
      context.globalAlpha = 1;
    }
    this.root.querySelector(".cxr-viewer-colorbar").hidden = !showOverlay;
    this.readout();
    this.root.dataset.state = JSON.stringify({
      study: this.data.id,
      ready: Boolean(this.grey),
      x: [-t.x / t.scale, (t.w - t.x) / t.scale],
      y: [-t.y / t.scale, (t.h - t.y) / t.scale],
      zoom: this.view.zoom,
      level: this.view.level,
      width: this.view.width,
      invert: this.view.invert,
      overlay: Boolean(showOverlay),
    });
  }

  // The window in the film's own units, and the film's value and the map's under the pointer.
  readout() {
    const { black, white, name } = this.data.units;
    const unit = (grey) => black + (grey / 255) * (white - black);
    const span = Math.abs(white - black) / 255;
    const digits = span < 0.1 ? 3 : span < 1 ? 1 : 0;
    const parts = [`W ${(this.view.width * span).toFixed(digits)} · L ${unit(this.view.level).toFixed(digits)} ${name}`];
    if (this.view.invert) parts.push("inverted");
    if (this.pointer && this.grey) {
      const [fx, fy] = this.pointer;
      const px = Math.floor((fx / this.data.width) * this.film.width);
      const py = Math.floor((fy / this.data.height) * this.film.height);
      if (px >= 0 && py >= 0 && px < this.film.width && py < this.film.height) {
        parts.push(`value ${unit(this.grey[py * this.film.width + px]).toFixed(digits)}`);
        const map = this.data.map;
        if (map && shared.overlay) {
          const column = Math.floor((fx / this.data.width) * map.columns);
          const row = Math.floor((fy / this.data.height) * map.rows);
          const value = map.values[row * map.columns + column];
          if (value !== null && value !== undefined) parts.push(`map ${value.toFixed(2)}`);
        }
      }
    }
    this.root.querySelector(".cxr-viewer-readout").textContent = parts.join(" · ");
  }

  toolbar() {
    const bar = this.root.querySelector(".cxr-viewer-toolbar");
    const buttons = [
      ...Object.keys(this.data.presets).map((name, index) => [name, `${name} (${index + 1})`, () => this.preset(name)]),
      ["invert", "invert (i)", () => this.toggleInvert()],
      ["overlay", "overlay (o)", () => this.toggleOverlay()],
      ["reset", "reset view (r)", () => this.reset()],
      ["full screen", "full screen (f)", () => this.fullscreen()],
    ];
    bar.replaceChildren(
      ...buttons.map(([label, title, action]) => {
        const button = document.createElement("button");
        button.type = "button";
        button.textContent = label;
        button.title = title;
        button.dataset.action = label;
        button.onclick = (event) => {
          event.preventDefault();
          action();
        };
        return button;
      }),
    );
    this.markButtons();
  }

  markButtons() {
    for (const button of this.root.querySelectorAll(".cxr-viewer-toolbar button")) {
      const action = button.dataset.action;
      const preset = this.data.presets[action];
      const on =
        (preset && preset[0] === this.view.level && preset[1] === this.view.width) ||
        (action === "invert" && this.view.invert) ||
        (action === "overlay" && shared.overlay && Boolean(this.data.overlay));
      button.classList.toggle("cxr-viewer-on", Boolean(on));
      if (action === "overlay") button.disabled = !this.data.overlay;
    }
  }

  preset(name) {
    [this.view.level, this.view.width] = this.data.presets[name];
    shared.preset = name;
    this.changed();
  }

  toggleInvert() {
    this.view.invert = !this.view.invert;
    this.changed();
  }

  toggleOverlay() {
    shared.overlay = !shared.overlay;
    this.changed();
  }

  reset() {
    Object.assign(this.view, { zoom: 1, cx: this.data.width / 2, cy: this.data.height / 2 });
    this.changed();
  }

  fullscreen() {
    if (document.fullscreenElement) document.exitFullscreen();
    else this.root.requestFullscreen();
  }

  changed() {
    this.markButtons();
    this.draw();
  }

  filmPoint(event) {
    const box = this.canvas.getBoundingClientRect();
    const t = this.transform();
    return [(event.clientX - box.left - t.x) / t.scale, (event.clientY - box.top - t.y) / t.scale];
  }

  listen() {
    const canvas = this.canvas;
    canvas.addEventListener("contextmenu", (event) => event.preventDefault());
    canvas.addEventListener(
      "wheel",
      (event) => {
        event.preventDefault();
        const [fx, fy] = this.filmPoint(event);
        const zoom = Math.min(ZOOM_LIMITS[1], Math.max(ZOOM_LIMITS[0], this.view.zoom * Math.exp(-event.deltaY * 0.0015)));
        const factor = this.view.zoom / zoom; // keep the film point under the pointer
        this.view.cx = fx + (this.view.cx - fx) * factor;
        this.view.cy = fy + (this.view.cy - fy) * factor;
        this.view.zoom = zoom;
        this.draw();
      },
      { passive: false },
    );
    canvas.addEventListener("pointerdown", (event) => {
      this.root.focus({ preventScroll: true });
      const windowing = event.button === 2 || event.shiftKey;
      this.drag = { x: event.clientX, y: event.clientY, windowing, start: { ...this.view } };
      canvas.setPointerCapture(event.pointerId);
    });
    canvas.addEventListener("pointermove", (event) => {
      this.pointer = this.filmPoint(event);
      if (!this.drag) {
        this.readout();
        return;
      }
      const dx = event.clientX - this.drag.x;
      const dy = event.clientY - this.drag.y;
      const start = this.drag.start;
      if (this.drag.windowing) {
        this.view.width = Math.round(Math.min(512, Math.max(1, start.width + dx * WINDOW_PX * 2)));
        this.view.level = Math.round(Math.min(255, Math.max(0, start.level + dy * WINDOW_PX)));
        this.markButtons();
      } else {
        const scale = this.transform().scale;
        this.view.cx = start.cx - dx / scale;
        this.view.cy = start.cy - dy / scale;
      }
      this.draw();
    });
    const end = () => (this.drag = null);
    canvas.addEventListener("pointerup", end);
    canvas.addEventListener("pointercancel", end);
    canvas.addEventListener("pointerleave", () => {
      this.pointer = null;
      this.readout();
    });
    canvas.addEventListener("dblclick", () => this.reset());
  }

  key(event) {
    if (event.ctrlKey || event.metaKey || event.altKey || !this.root.isConnected || ownsKeys(event.target)) return;
    const presets = Object.keys(this.data.presets);
    const actions = {
      ArrowDown: () => this.setTriggerValue("step", 1),
      j: () => this.setTriggerValue("step", 1),
      ArrowUp: () => this.setTriggerValue("step", -1),
      k: () => this.setTriggerValue("step", -1),
      i: () => this.toggleInvert(),
      o: () => this.toggleOverlay(),
      f: () => this.fullscreen(),
      r: () => this.reset(),
    };
    presets.forEach((name, index) => (actions[String(index + 1)] = () => this.preset(name)));
    const action = actions[event.key];
    if (action) {
      event.preventDefault();
      action();
    }
  }
}
