"""Stand-ins for the Qt objects MedFusion's panel uses (slicer-core has no Qt), for tests.

- :class:`FakeWidget`/:class:`FakeComboBox`: the ``.ui`` file's widgets as plain Python objects
  (names, classes, properties, signals), built by :func:`load_fake_ui`, so that the Widget's own
  Python code runs;
- :class:`FakeTimer`: ``qt.QTimer`` as the background fusion uses it (interval, ``timeout()``,
  start/stop); a test fires the running timers with :meth:`FakeTimer.fire_all`, as the event
  loop would every interval;
- :func:`fake_qt_module`: a ``qt`` module with these (anything else a ``MagicMock``).

Nothing here is used by the product.
"""

from __future__ import annotations

import inspect
import types
import xml.etree.ElementTree as ET
from unittest import mock



class FakeWidget:
    """The Qt properties and signals the module uses, on plain Python attributes."""

    def __init__(self, name, class_name, properties):
        self.objectName = name
        self.className = class_name
        self._properties = properties
        self._slots = {}
        self.enabled = properties.get("enabled", "true") != "false"
        self.toolTip = properties.get("toolTip", "")
        self.text = properties.get("text", "") or ""
        self.visible = True
        self.value = 0

    def property(self, name):
        return self._properties.get(name)

    def connect(self, signal, slot):
        self._slots.setdefault(signal, []).append(slot)

    def emit(self, signal, *args):
        """Call the connected slots; like PythonQt, pass only as many arguments as a slot takes."""
        for slot in self._slots.get(signal, []):
            params = inspect.signature(slot).parameters.values()
            if any(p.kind is p.VAR_POSITIONAL for p in params):
                slot(*args)
            else:
                n = sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params)
                slot(*args[:n])

    def setVisible(self, visible):
        self.visible = bool(visible)

    def setValue(self, value):
        self.value = value

    def click(self):
        if self.enabled:
            self.emit("clicked(bool)", False)


class FakeComboBox(FakeWidget):
    def __init__(self, name, class_name, properties):
        super().__init__(name, class_name, properties)
        self.items = []  # [text, data, tooltip]
        self._index = -1

    def clear(self):
        self.items = []
        self.currentIndex = -1

    def addItem(self, text, data=None):
        self.items.append([text, data, None])
        if self._index < 0:
            self.currentIndex = 0

    @property
    def count(self):
        return len(self.items)

    def itemData(self, index):
        return self.items[index][1] if 0 <= index < len(self.items) else None

    def setItemData(self, index, value, role):
        self.items[index][2] = value

    def findData(self, data):
        return next((i for i, item in enumerate(self.items) if item[1] == data), -1)

    @property
    def currentIndex(self):
        return self._index

    @currentIndex.setter
    def currentIndex(self, index):
        if index != self._index:
            self._index = index
            self.emit("currentIndexChanged(int)", index)


def load_fake_ui(path):
    """``slicer.util.loadUI`` stand-in: the .ui file's widgets as fake widgets, by name."""
    root = ET.parse(path).getroot().find("widget")
    children = {}
    for element in root.iter("widget"):
        if element is root:
            continue
        properties = {}
        for prop in element.findall("property"):
            value = list(prop)[0] if len(prop) else None
            if value is not None and value.tag in ("string", "bool", "number"):
                properties[prop.get("name")] = value.text
        cls = FakeComboBox if element.get("class") == "QComboBox" else FakeWidget
        children[element.get("name")] = cls(element.get("name"), element.get("class"), properties)
    return types.SimpleNamespace(children=children, setMRMLScene=lambda scene: None)


def fake_child_widget_variables(ui_root):
    return types.SimpleNamespace(**ui_root.children)


class FakeTimer:
    """``qt.QTimer`` stand-in: records its slot; :meth:`fire_all` calls the running timers' slots
    once (what the event loop does every interval)."""

    running: list = []

    def __init__(self):
        self.interval = 0
        self.active = False
        self._slots = []

    def setInterval(self, ms):
        self.interval = int(ms)

    def connect(self, signal, slot):
        assert signal == "timeout()", signal
        self._slots.append(slot)

    def start(self):
        self.active = True
        if self not in FakeTimer.running:
            FakeTimer.running.append(self)

    def stop(self):
        self.active = False
        if self in FakeTimer.running:
            FakeTimer.running.remove(self)

    @classmethod
    def fire_all(cls):
        for timer in list(cls.running):
            for slot in list(timer._slots):
                slot()


def fake_qt_module():
    """A ``qt`` module for tests: :class:`FakeTimer` as ``QTimer``, ``Qt.ToolTipRole``; anything
    else a ``MagicMock``."""
    module = mock.MagicMock(name="qt")
    module.QTimer = FakeTimer
    module.Qt = types.SimpleNamespace(ToolTipRole=3, WaitCursor=16)
    return module
