/* jaxface report: the 3D viewer.
   The page opens from disk (file://), where browsers refuse ES modules and fetch() of local
   files, so three.js and every mesh arrive as classic <script>s, loaded only when a photo is
   first chosen: a page of 1,000 rows stays light. A mesh script calls jaxfaceMesh({...}),
   a topology script jaxfaceTopology({...}) (formats: jaxface/report/assets.py). */
(function () {
  'use strict';
  var root = document.getElementById('viewer');
  var statusEl = document.getElementById('viewer-status');
  var holder = document.getElementById('viewer-canvas');
  var resetButton = document.getElementById('viewer-reset');
  var shadeBox = document.getElementById('viewer-shade');
  var FOV = 30;             // vertical field of view, degrees
  var MARGIN = 1.05;        // the bounding sphere fills 1/MARGIN of the view
  var KEY_STEP = Math.PI / 18;
  var meshes = Object.create(null), topologies = Object.create(null), requested = Object.create(null);
  var view = null;          // renderer, scene, camera, mesh and the orbit state
  var want = null;          // {name, src, button} being loaded

  function setState(state, text) {
    root.setAttribute('data-state', state);
    statusEl.textContent = text;
  }

  function fail(text) {
    want = null;
    setState('error', text);
  }

  function loadScript(src, what, onload) {
    if (requested[src]) return;
    requested[src] = true;
    var s = document.createElement('script');
    s.src = src;
    if (onload) s.onload = onload;
    s.onerror = function () {
      delete requested[src];
      fail('Could not load ' + what + ' (' + src + '). Run "jaxface report" on the output folder to rebuild the page.');
    };
    document.head.appendChild(s);
  }

  function bytes(b64) {
    var s = atob(b64), out = new Uint8Array(s.length);
    for (var i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
    return out;
  }

  function base64(u8) {
    var s = '';
    for (var i = 0; i < u8.length; i += 0x8000) s += String.fromCharCode.apply(null, u8.subarray(i, i + 0x8000));
    return btoa(s);
  }

  // Load what the wanted mesh still needs (three.js, its data, its triangles), then show it.
  function step() {
    if (!want) return;
    if (!window.THREE) {
      window.exports = {};  // three.cjs is a CommonJS bundle: it fills `exports`
      loadScript(root.getAttribute('data-three'), 'three.js', function () {
        window.THREE = window.exports;
        delete window.exports;
        step();
      });
      return;
    }
    var name = want.name, d = meshes[name];
    if (!d) return loadScript(want.src, 'the mesh of ' + name, missing(want.src, name, meshes, name));
    if (!/^[0-9a-f]+$/.test(d.topology)) return fail('The mesh file of ' + name + ' is damaged.');
    var t = topologies[d.topology], tsrc = root.getAttribute('data-topology') + d.topology + '.js';
    if (!t) return loadScript(tsrc, 'the triangles of ' + name, missing(tsrc, name, topologies, d.topology));
    want = null;
    try {
      show(d, t);
    } catch (e) {
      fail('Cannot show the mesh of ' + name + ': ' + e.message);
      return;
    }
    setState('ready', 'Showing the mesh of ' + name + ': ' + d.vertices + ' vertices, ' + t.triangles + ' triangles.');
  }

  // After a data script ran: it should have registered `key`; a stale or foreign file did not.
  function missing(src, name, table, key) {
    return function () {
      if (want && want.name === name && !table[key]) fail('The file ' + src + ' does not hold the data of ' + name + '. Run "jaxface report" on the output folder to rebuild the page.');
    };
  }

  window.jaxfaceMesh = function (d) { meshes[d.name] = d; step(); };
  window.jaxfaceTopology = function (t) { topologies[t.id] = t; step(); };

  function setup() {
    var probe = document.createElement('canvas');
    if (!probe.getContext('webgl2')) return null;
    var T = window.THREE;
    T.ColorManagement.enabled = false;  // vertex colours are display values: pass them through
    var renderer = new T.WebGLRenderer({ antialias: true, preserveDrawingBuffer: true });
    renderer.outputColorSpace = T.LinearSRGBColorSpace;
    renderer.setPixelRatio(window.devicePixelRatio || 1);
    renderer.setClearColor(0x202428);
    var canvas = renderer.domElement;
    canvas.tabIndex = 0;
    canvas.setAttribute('role', 'img');
    holder.appendChild(canvas);
    var scene = new T.Scene();
    var camera = new T.PerspectiveCamera(FOV, 1, 0.01, 100);
    var light = new T.DirectionalLight(0xffffff, 2.2);
    light.position.set(0.5, 0.6, 1);
    camera.add(light);  // the light follows the view
    scene.add(camera, new T.HemisphereLight(0xffffff, 0x404040, 1.2));
    var v = { renderer: renderer, scene: scene, camera: camera, mesh: null, radius: 1, distance: 1,
              yaw: 0, pitch: 0, zoom: 1, materials: {
                flat: new T.MeshBasicMaterial({ vertexColors: true, side: T.DoubleSide }),
                shaded: new T.MeshLambertMaterial({ vertexColors: true, side: T.DoubleSide }) } };
    var drag = null;
    canvas.addEventListener('pointerdown', function (e) {
      drag = { x: e.clientX, y: e.clientY };
      canvas.setPointerCapture(e.pointerId);
    });
    canvas.addEventListener('pointermove', function (e) {
      if (!drag) return;
      rotate((e.clientX - drag.x) * 0.01, (e.clientY - drag.y) * 0.01);
      drag = { x: e.clientX, y: e.clientY };
    });
    canvas.addEventListener('pointerup', function () { drag = null; });
    canvas.addEventListener('wheel', function (e) {
      e.preventDefault();
      zoom(Math.exp(e.deltaY * 0.001));
    }, { passive: false });
    canvas.addEventListener('keydown', function (e) {
      var keys = { ArrowLeft: [-KEY_STEP, 0], ArrowRight: [KEY_STEP, 0], ArrowUp: [0, -KEY_STEP], ArrowDown: [0, KEY_STEP] };
      if (keys[e.key]) rotate(keys[e.key][0], keys[e.key][1]);
      else if (e.key === '+' || e.key === '=') zoom(1 / 1.2);
      else if (e.key === '-') zoom(1.2);
      else if (e.key === '0') reset();
      else return;
      e.preventDefault();
    });
    resetButton.addEventListener('click', reset);
    shadeBox.addEventListener('change', function () {
      if (v.mesh) v.mesh.material = shadeBox.checked ? v.materials.shaded : v.materials.flat;
      draw();
    });
    window.addEventListener('resize', draw);
    return v;
  }

  function rotate(dyaw, dpitch) {
    view.yaw += dyaw;
    view.pitch = Math.max(-Math.PI / 2, Math.min(Math.PI / 2, view.pitch + dpitch));
    draw();
  }

  function zoom(factor) {
    view.zoom = Math.max(0.2, Math.min(5, view.zoom * factor));
    draw();
  }

  function reset() {
    view.yaw = view.pitch = 0;
    view.zoom = 1;
    draw();
  }

  function draw() {
    var v = view;
    if (!v || !v.mesh) return;
    var size = Math.max(1, holder.clientWidth);
    v.renderer.setSize(size, size, false);
    v.mesh.rotation.set(v.pitch, v.yaw, 0, 'YXZ');
    var d = v.distance * v.zoom;
    v.camera.position.set(0, 0, d);
    v.camera.near = Math.max(d - 2 * v.radius, d * 0.01);
    v.camera.far = d + 2 * v.radius;
    v.camera.updateProjectionMatrix();
    v.renderer.render(v.scene, v.camera);
  }

  function show(d, t) {
    var T = window.THREE, n = d.vertices;
    if (t.vertices !== n) throw new Error('its triangles belong to a mesh of ' + t.vertices + ' vertices, not ' + n);
    var q = new Uint16Array(bytes(d.position).buffer), rgb = bytes(d.color);
    var idx = t.type === 'u16' ? new Uint16Array(bytes(t.index).buffer) : new Uint32Array(bytes(t.index).buffer);
    if (q.length !== 3 * n || rgb.length !== 3 * n || idx.length !== 3 * t.triangles) throw new Error('the file is damaged');
    var pos = new Float32Array(3 * n), col = new Float32Array(3 * n);
    for (var i = 0; i < 3 * n; i++) {
      pos[i] = d.lo[i % 3] + q[i] * d.step[i % 3];
      col[i] = rgb[i] / 255;
    }
    if (!view) view = setup();
    if (!view) throw new Error('this browser has no WebGL 2 (the .obj files open in any 3D viewer)');
    var g = new T.BufferGeometry();
    g.setAttribute('position', new T.BufferAttribute(pos, 3));
    g.setAttribute('color', new T.BufferAttribute(col, 3));
    g.setIndex(new T.BufferAttribute(idx, 1));
    g.computeBoundingSphere();
    var c = g.boundingSphere.center;
    g.translate(-c.x, -c.y, -c.z);  // orbit about the mesh's centre
    g.computeVertexNormals();
    if (view.mesh) {
      view.scene.remove(view.mesh);
      view.mesh.geometry.dispose();
    }
    view.mesh = new T.Mesh(g, shadeBox.checked ? view.materials.shaded : view.materials.flat);
    view.scene.add(view.mesh);
    view.radius = g.boundingSphere.radius || 1;
    view.distance = view.radius / Math.sin(FOV * Math.PI / 360) * MARGIN;
    view.renderer.domElement.setAttribute('aria-label', '3D mesh of ' + d.name +
      '; arrow keys rotate, + and - zoom, 0 resets');
    resetButton.disabled = shadeBox.disabled = false;
    reset();
  }

  function choose(button) {
    var old = document.querySelector('tr.current');
    if (old) old.classList.remove('current');
    var row = button.closest('tr');
    if (row) row.classList.add('current');
    want = { name: button.getAttribute('data-name'), src: button.getAttribute('data-mesh') };
    setState('loading', 'Loading the mesh of ' + want.name + '\u2026');
    if (root.getBoundingClientRect().bottom < 0) root.scrollIntoView({ block: 'nearest' });
    step();
  }

  document.addEventListener('click', function (e) {
    var b = e.target.closest ? e.target.closest('button.view') : null;
    if (b) choose(b);
  });

  // For tests and scripts: the view's geometry and its pixels (RGBA rows, bottom row first).
  window.jaxfaceReport = {
    camera: function () {
      return view && { fov: FOV, distance: view.distance * view.zoom, radius: view.radius, aspect: view.camera.aspect };
    },
    pixels: function () {
      if (!view || !view.mesh) return null;
      draw();
      var gl = view.renderer.getContext(), w = gl.drawingBufferWidth, h = gl.drawingBufferHeight;
      var buf = new Uint8Array(w * h * 4);
      gl.readPixels(0, 0, w, h, gl.RGBA, gl.UNSIGNED_BYTE, buf);
      return { width: w, height: h, data: base64(buf) };
    }
  };
})();
