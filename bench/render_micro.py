import time, random
from nodeagent.metrics import counter
from nodeagent.exposition import FamilyRenderer
LV=[(f"/kubepods/burstable/pod{i}/abc", f"name{i}", "docker.io/library/busybox:1.36", f"c{i}", f"pod-{i}", "default") for i in range(250)]
def fams(k, changed):
    out=[]
    for f in range(20):
        b=counter(f"container_thing_{f}_total","Help.",("id","name","image","container","pod","namespace"))
        for i in range(250):
            v = (i*1000003 + (k if (i % 100) < changed else 0))
            if f % 2: v = v / 1e6   # half the families carry seconds from microseconds
            b.add(LV[i], v)
        out.append(b.build())
    return out
for changed in (0, 50, 100):
    r=FamilyRenderer(); r.render(fams(0, changed)); best=9
    for k in range(1,6):
        fs=fams(k, changed); t=time.perf_counter(); c=r.render(fs); best=min(best,time.perf_counter()-t)
    print(f"{changed}% of series changed: {best*1e6/c.series:.3f} us/series ({c.series} series)")
